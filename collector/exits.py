"""Every exit code of `iot-collector`, in one place.

The supervisor, the workers and the command line all end with one of these, and
`serve --help`, the README and the chart's probes describe them, so they must not
drift apart: import them from here, never write the number.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
"""Clean stop: every worker drained what it held."""

EXIT_DRAIN_INCOMPLETE: Final = 1
"""A worker did not drain within --drain-timeout (or crashed) and was killed."""

EXIT_CONFIG: Final = 2
"""Bad configuration: a flag, an environment variable or a file named by one."""

EXIT_STORE_UNAVAILABLE: Final = 3
"""The store could not be reached (or set up) at start-up."""

EXIT_BIND: Final = 4
"""A socket cannot be bound, or the UDP port is already served by another process."""

DESCRIPTIONS: Final = (
    (EXIT_OK, "stopped cleanly (every worker drained)"),
    (EXIT_DRAIN_INCOMPLETE, "a worker did not finish draining within --drain-timeout"),
    (EXIT_CONFIG, "bad configuration (flag, environment variable or file)"),
    (EXIT_STORE_UNAVAILABLE, "the store was unavailable at start-up"),
    (EXIT_BIND, "a socket cannot be bound, or the UDP port is already served"),
)
"""(code, meaning) in order, for `serve --help` and the README."""

__all__ = [
    "DESCRIPTIONS",
    "EXIT_BIND",
    "EXIT_CONFIG",
    "EXIT_DRAIN_INCOMPLETE",
    "EXIT_OK",
    "EXIT_STORE_UNAVAILABLE",
]
