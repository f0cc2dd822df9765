"""The CLI's commands as coroutines: healthcheck, discover, send, incremental.

Each returns an exit code (see :mod:`outcomes`). Sending commands share one
:class:`Sender`: it packs events into requests of ``batch`` events, keeps at most
``window`` requests in flight on one endpoint and prints each answer as it
arrives, so (as in the thesis' demo) lines may come out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from coap import Code
from coap.transmission import TransmissionParameters
from collector.resources import HEALTH_WORDS

from . import payloads
from .endpoint import ClientEndpoint, RequestError, Response
from .outcomes import Tally, describe_payload, emit, format_answer

__all__ = [
    "EVENTS_PATH",
    "ClientConfig",
    "Sender",
    "StopFlag",
    "connect",
    "incremental_values",
    "run_discover",
    "run_healthcheck",
    "run_incremental",
    "run_send",
]

EVENTS_PATH = "/events"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything the commands need, validated once by the CLI."""

    host: str = "127.0.0.1"
    port: int = 5683
    origin: str = "probe1"
    sender: str = "iot-client"
    namespace: str = "default"
    silent: bool = False
    format: str = "json"
    confirmable: bool = True
    batch: int = 1
    window: int = 8
    timeout: float | None = None
    params: TransmissionParameters = field(default_factory=TransmissionParameters)
    psk: tuple[str, bytes] | None = None  # (identity, key): speak coaps (client/dtls.py)

    def event(
        self,
        type: str,
        value: payloads.Value,
        *,
        unit: str | None = None,
        origin: str | None = None,
        timestamp: float | None = None,
    ) -> payloads.Event:
        return payloads.make_event(
            type=type,
            value=value,
            origin=self.origin if origin is None else origin,
            sender=self.sender,
            namespace=self.namespace,
            unit=unit,
            timestamp=timestamp,
        )


class StopFlag:
    """Set by the first SIGINT/SIGTERM: stop sending, let in-flight requests finish.
    A second signal cancels what is still in flight."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.on_second: Callable[[], None] | None = None
        self._installed: list[int] = []

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._signalled)
                self._installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests): no signal handling

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)
        self._installed.clear()

    def _signalled(self) -> None:
        if self.event.is_set() and self.on_second is not None:
            self.on_second()
        self.event.set()

    @property
    def stopped(self) -> bool:
        return self.event.is_set()


async def post_events(
    endpoint: ClientEndpoint,
    config: ClientConfig,
    body: bytes,
    content_format: int,
    query: payloads.Options,
) -> Response | RequestError:
    """POST /events once (as `payloads.encode_request` made it): the answer, or the
    error that ended the exchange."""
    try:
        return await endpoint.request(
            Code.POST,
            EVENTS_PATH,
            payload=body,
            content_format=content_format,
            confirmable=config.confirmable,
            timeout=config.timeout,
            options=query,
        )
    except RequestError as exc:
        return exc


class Sender:
    """Sends event batches on one endpoint with a bounded window, printing answers."""

    def __init__(
        self, endpoint: ClientEndpoint, config: ClientConfig, out: TextIO | None = None
    ) -> None:
        self.endpoint = endpoint
        self.config = config
        self.out = out or sys.stdout
        self.tally = Tally()
        self._window = asyncio.Semaphore(max(1, config.window))
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, events: Sequence[payloads.Event]) -> None:
        """Wait for room in the window, then send ``events`` as one request."""
        await self._window.acquire()
        request = payloads.encode_request(events, self.config.format)
        shown: object = events[0] if len(events) == 1 else list(events)
        task = asyncio.create_task(self._one(request, shown, len(events)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(
        self, request: tuple[bytes, int, payloads.Options], shown: object, count: int
    ) -> None:
        try:
            self.tally.requests_sent += 1
            self.tally.events_sent += count
            outcome = await post_events(self.endpoint, self.config, *request)
        finally:
            self._window.release()
        self.tally.add(outcome, count)
        if not self.config.silent:
            emit(format_answer("POST", EVENTS_PATH, outcome, shown), self.out)

    async def drain(self) -> None:
        """Wait for every request in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def connect(
    config: ClientConfig, rng: random.Random | None = None, *, refused_is_final: bool = True
) -> ClientEndpoint:
    """An endpoint to the collector: plain CoAP, or coaps when a PSK is configured.

    ``refused_is_final``: a closed port ends the requests at once (one-shot
    commands); the simulator keeps retransmitting across a server restart.
    """
    if config.psk is not None:
        from . import dtls

        endpoint = await dtls.connect(
            config.host,
            config.port,
            *config.psk,
            params=config.params,
            rng=rng,
            timeout=config.timeout or dtls.HANDSHAKE_TIMEOUT,
        )
    else:
        endpoint = await ClientEndpoint.connect(
            config.host, config.port, params=config.params, rng=rng
        )
    endpoint.refused_is_final = refused_is_final
    return endpoint


async def _get(config: ClientConfig, path: str, out: TextIO) -> tuple[int, Response | None]:
    endpoint = await connect(config)
    try:
        response = await endpoint.get(path, confirmable=config.confirmable, timeout=config.timeout)
    except RequestError as exc:
        tally = Tally()
        tally.add(exc)
        if not config.silent:
            emit(format_answer("GET", path, exc), out)
        return tally.exit_code, None
    finally:
        endpoint.close()
    tally = Tally()
    tally.add(response)
    return tally.exit_code, response


async def run_healthcheck(config: ClientConfig, out: TextIO) -> int:
    """GET /health; prints ``GET /health -> 2.05 0 (ok)``; 0 only when healthy.

    The collector's status is one number (see `collector.resources`): the word it
    stands for follows it. Other servers' bodies are printed as they come."""
    code, response = await _get(config, "/health", out)
    if response is not None and not config.silent:
        line = format_answer("GET", "/health", response)
        body = describe_payload(response)
        if body and "--" not in line:
            line += " " + body
            word = HEALTH_WORDS.get(int(body)) if body.isdigit() else None
            if word is not None:
                line += f" ({word})"
        emit(line, out)
    return code


def parse_link_format(text: str) -> list[tuple[str, dict[str, str | bool]]]:
    """Links of an RFC 6690 document as (target, attributes), in order.

    A target runs from ``<`` to the next ``>`` (it may hold commas); a quoted value
    may hold ``;``, ``,`` and backslash escapes; an attribute without ``=`` is
    ``True``. Raises ValueError for anything else.
    """
    links: list[tuple[str, dict[str, str | bool]]] = []
    n = len(text)
    i = _skip_space(text, 0)
    while i < n:
        if text[i] != "<":
            raise ValueError(f"expected '<' at offset {i}")
        end = text.find(">", i + 1)
        if end < 0:
            raise ValueError("unterminated link target")
        target = text[i + 1 : end]
        attrs: dict[str, str | bool] = {}
        i = end + 1
        while i < n and text[i] == ";":
            i += 1
            start = i
            while i < n and text[i] not in "=;,":
                i += 1
            name = text[start:i].strip()
            if not name:
                raise ValueError(f"empty attribute name at offset {start}")
            if i < n and text[i] == "=":
                value, i = _attribute_value(text, i + 1)
                attrs[name] = value
            else:
                attrs[name] = True
        links.append((target, attrs))
        i = _skip_space(text, i)
        if i < n:
            if text[i] != ",":
                raise ValueError(f"expected ',' at offset {i}")
            i = _skip_space(text, i + 1)
    return links


def _show_attribute(name: str, value: str | bool) -> str:
    if value is True:
        return f";{name}"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f';{name}="{escaped}"'


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _attribute_value(text: str, i: int) -> tuple[str, int]:
    """A quoted string (with backslash escapes) or a bare token; returns (value, next)."""
    n = len(text)
    if i < n and text[i] == '"':
        chars = []
        i += 1
        while i < n and text[i] != '"':
            if text[i] == "\\" and i + 1 < n:
                i += 1
            chars.append(text[i])
            i += 1
        if i >= n:
            raise ValueError("unterminated quoted string")
        return "".join(chars), i + 1
    start = i
    while i < n and text[i] not in ";,":
        i += 1
    return text[start:i].strip(), i


async def run_discover(config: ClientConfig, out: TextIO) -> int:
    """GET /.well-known/core; prints the status line, then one link a line."""
    path = "/.well-known/core"
    code, response = await _get(config, path, out)
    if response is None:
        return code
    if config.silent:
        return code
    emit(format_answer("GET", path, response), out)
    if code == 0:
        try:
            links = parse_link_format(response.message.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            emit(f"iot-client: the answer is not link format: {exc}", sys.stderr)
            return 1
        for target, attrs in links:
            emit(
                "".join([f"<{target}>", *(_show_attribute(k, v) for k, v in attrs.items())]),
                out,
            )
    return code


async def run_send(
    config: ClientConfig,
    type: str,
    values: Sequence[payloads.Value],
    unit: str | None,
    out: TextIO,
) -> int:
    """One event per value, ``config.batch`` events per request."""
    events = [config.event(type, value, unit=unit) for value in values]
    return await send_events(config, events, out)


async def send_events(config: ClientConfig, events: list[payloads.Event], out: TextIO) -> int:
    """Send `events`, ``config.batch`` per request; the exit code of the answers."""
    endpoint = await connect(config)
    try:
        sender = Sender(endpoint, config, out)
        for start in range(0, len(events), config.batch):
            await sender.submit(events[start : start + config.batch])
        await sender.drain()
    finally:
        endpoint.close()
    return sender.tally.exit_code


def incremental_values(
    initial: float,
    factor: float,
    minimum: float | None,
    maximum: float | None,
) -> Iterator[float]:
    """initial, initial*factor, ... each clamped to [minimum, maximum] (forever)."""

    def clamp(v: float) -> float:
        if minimum is not None and v < minimum:
            v = minimum
        if maximum is not None and v > maximum:
            v = maximum
        return v

    value = clamp(initial)
    while True:
        yield value
        value = clamp(value * factor)


async def run_incremental(
    config: ClientConfig,
    type: str,
    values: Iterator[float],
    *,
    count: int | None,
    pace: float,
    unit: str | None,
    out: TextIO,
) -> int:
    """``count`` events (None: until SIGINT/SIGTERM) from ``values``, ``pace``
    seconds apart, ``config.batch`` per request, ``config.window`` in flight."""
    endpoint = await connect(config)
    stop = StopFlag()
    stop.install()
    sender = Sender(endpoint, config, out)
    stop.on_second = sender.cancel
    try:
        batch: list[payloads.Event] = []
        sent = 0
        while not stop.stopped and (count is None or sent < count):
            batch.append(config.event(type, payloads.tidy_number(next(values)), unit=unit))
            sent += 1
            last = count is not None and sent >= count
            if len(batch) >= config.batch or last:
                await sender.submit(batch)
                batch = []
            if pace > 0 and not last:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.event.wait(), pace)
        if batch:  # interrupted with a partial batch: send what was built
            await sender.submit(batch)
        await sender.drain()
    finally:
        stop.uninstall()
        endpoint.close()
    return sender.tally.exit_code
