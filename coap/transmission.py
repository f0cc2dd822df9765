"""Transmission parameters (RFC 7252 §4.8) and the times derived from them (§4.8.2).

The defaults are module constants in seconds; :class:`TransmissionParameters`
derives the same values for other base parameters (§4.8.1 allows changing them
if the derived values are recomputed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "ACK_RANDOM_FACTOR",
    "ACK_TIMEOUT",
    "DEFAULT_LEISURE",
    "EXCHANGE_LIFETIME",
    "MAX_LATENCY",
    "MAX_RETRANSMIT",
    "MAX_RTT",
    "MAX_TRANSMIT_SPAN",
    "MAX_TRANSMIT_WAIT",
    "NON_LIFETIME",
    "NSTART",
    "PROBING_RATE",
    "PROCESSING_DELAY",
    "TransmissionParameters",
]


@dataclass(frozen=True, slots=True)
class TransmissionParameters:
    """The §4.8 base parameters; the properties are the §4.8.2 derived times."""

    ack_timeout: float = 2.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 4
    nstart: int = 1
    default_leisure: float = 5.0
    probing_rate: float = 1.0  # bytes/second
    # §4.8.2: "MAX_LATENCY is the maximum time a datagram is expected to take
    # from the start of its transmission to the completion of its reception";
    # arbitrarily defined as 100 seconds.
    max_latency: float = 100.0

    @property
    def max_transmit_span(self) -> float:
        """ACK_TIMEOUT * ((2 ** MAX_RETRANSMIT) - 1) * ACK_RANDOM_FACTOR."""
        return self.ack_timeout * ((1 << self.max_retransmit) - 1) * self.ack_random_factor

    @property
    def max_transmit_wait(self) -> float:
        """ACK_TIMEOUT * ((2 ** (MAX_RETRANSMIT + 1)) - 1) * ACK_RANDOM_FACTOR."""
        return self.ack_timeout * ((1 << (self.max_retransmit + 1)) - 1) * self.ack_random_factor

    @property
    def processing_delay(self) -> float:
        """§4.8.2: set to ACK_TIMEOUT, the time a node takes to turn a CON into an ACK."""
        return self.ack_timeout

    @property
    def max_rtt(self) -> float:
        """(2 * MAX_LATENCY) + PROCESSING_DELAY."""
        return 2 * self.max_latency + self.processing_delay

    @property
    def exchange_lifetime(self) -> float:
        """MAX_TRANSMIT_SPAN + (2 * MAX_LATENCY) + PROCESSING_DELAY: how long a MID is remembered."""
        return self.max_transmit_span + 2 * self.max_latency + self.processing_delay

    @property
    def non_lifetime(self) -> float:
        """MAX_TRANSMIT_SPAN + MAX_LATENCY: how long a NON's MID is remembered."""
        return self.max_transmit_span + self.max_latency


_DEFAULT = TransmissionParameters()

ACK_TIMEOUT: Final = 2.0
ACK_RANDOM_FACTOR: Final = 1.5
MAX_RETRANSMIT: Final = 4
NSTART: Final = 1
DEFAULT_LEISURE: Final = 5.0
PROBING_RATE: Final = 1.0
MAX_LATENCY: Final = 100.0
MAX_TRANSMIT_SPAN: Final = _DEFAULT.max_transmit_span  # 45 s
MAX_TRANSMIT_WAIT: Final = _DEFAULT.max_transmit_wait  # 93 s
PROCESSING_DELAY: Final = _DEFAULT.processing_delay  # 2 s
MAX_RTT: Final = _DEFAULT.max_rtt  # 202 s
EXCHANGE_LIFETIME: Final = _DEFAULT.exchange_lifetime  # 247 s
NON_LIFETIME: Final = _DEFAULT.non_lifetime  # 145 s
