"""Codec micro-benchmark: our ``coap`` against aiocoap, same process, same datagrams.

For each case one operation is "decode the datagram, then encode the message"
(aiocoap cannot re-encode an incoming message, so both sides encode an
equivalent pre-built outgoing one). Each figure is the median over ``--repeat``
timeit runs of the per-operation time, measured by default in process CPU time
(``--clock wall`` for wall time) because the development machine is shared and
wall time there mostly measures other people's jobs. Prints a Markdown table and, as the last
line, ``codec speedup vs aiocoap: N.Nx`` (the minimum over the cases).

    .venv/bin/python bench/codec_bench.py [--repeat 7] [--min-time 0.2] [--clock wall]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import coap
from coap import Code, Message, OptionNumber, Type

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import aiocoap
    from aiocoap.numbers.optionnumbers import OptionNumber as AioOptionNumber

BODY = b'{"sender":"demo","origin":"probe1","value":15.5}'  # 48 bytes

CASES: list[tuple[str, Message]] = [
    (
        "device POST (CON, token, Uri-Path, CF 50, JSON)",
        Message(
            Type.CON,
            Code.POST,
            0x1234,
            b"\x8a\x01\x5c\x3e",
            ((OptionNumber.URI_PATH, b"events"), (OptionNumber.CONTENT_FORMAT, b"\x32")),
            BODY,
        ),
    ),
    (
        "10 options incl. extended",
        Message(
            Type.CON,
            Code.POST,
            0x4321,
            b"\x01\x02\x03\x04\x05\x06\x07\x08",
            (
                (OptionNumber.URI_HOST, b"collector.example.org"),  # 13-form length
                (OptionNumber.ETAG, b"\x01\x02\x03\x04"),
                (OptionNumber.URI_PATH, b"api"),
                (OptionNumber.URI_PATH, b"events"),
                (OptionNumber.CONTENT_FORMAT, b"\x3c"),
                (OptionNumber.URI_QUERY, b"namespace=default"),  # 13-form length
                (OptionNumber.BLOCK1, b"\x0e"),  # 13-form delta
                (OptionNumber.SIZE1, b"\x04\x00"),  # 13-form delta
                (OptionNumber.NO_RESPONSE, b"\x02"),  # 13-form delta
                (2049, b"x" * 300),  # 14-form delta and length
            ),
            b"\xa1\x61\x76\xf9\x4b\xc0",
        ),
    ),
    (
        "ACK 2.01 with token",
        Message(Type.ACK, Code.CREATED, 0x1234, b"\x8a\x01\x5c\x3e"),
    ),
]


def aiocoap_message(message: Message) -> aiocoap.Message:
    theirs = aiocoap.Message(
        _mtype=int(message.type),
        code=int(message.code),
        _mid=message.mid,
        _token=message.token,
        payload=message.payload,
    )
    for number, value in message.options:
        theirs.opt.add_option(AioOptionNumber(number).create_option(decode=value))
    return theirs


def median_seconds(
    op: Callable[[], object], repeat: int, min_time: float, timer: Callable[[], float]
) -> float:
    """Median per-call time over ``repeat`` runs of about ``min_time`` seconds each."""
    t = timeit.Timer(op, timer=timer)
    number, elapsed = t.autorange()
    number = max(1, int(number * min_time / max(elapsed, 1e-9)))
    return statistics.median(run / number for run in t.repeat(repeat, number))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit repetitions (median)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per repetition")
    parser.add_argument(
        "--clock",
        choices=("process", "wall"),
        default="process",
        help="process CPU time (default: steadier on a shared machine) or wall time",
    )
    args = parser.parse_args(argv)
    timer = time.process_time if args.clock == "process" else time.perf_counter

    print("| case | bytes | coap (µs) | aiocoap (µs) | speedup |")
    print("| --- | ---: | ---: | ---: | ---: |")
    speedups = []
    for name, message in CASES:
        datagram = coap.encode(message)
        theirs = aiocoap_message(message)
        # Sanity: both sides agree on the bytes before we time them.
        if theirs.encode() != datagram or coap.decode(datagram) != message:
            print(f"codec_bench: {name}: codecs disagree on the datagram", file=sys.stderr)
            return 1

        def ours(
            d: bytes = datagram,
            m: Message = message,
            decode: Callable[[bytes], Message] = coap.decode,
            encode: Callable[[Message], bytes] = coap.encode,
        ) -> bytes:
            decode(d)
            return encode(m)

        def aio(
            d: bytes = datagram,
            m: aiocoap.Message = theirs,
            aio_decode: Callable[[bytes], aiocoap.Message] = aiocoap.Message.decode,
        ) -> bytes:
            aio_decode(d)
            return m.encode()  # type: ignore[no-any-return]

        t_ours = median_seconds(ours, args.repeat, args.min_time, timer)
        t_aio = median_seconds(aio, args.repeat, args.min_time, timer)
        speedup = t_aio / t_ours
        speedups.append(speedup)
        print(
            f"| {name} | {len(datagram)} | {t_ours * 1e6:.2f} | {t_aio * 1e6:.2f} | {speedup:.1f}x |"
        )
    print(f"codec speedup vs aiocoap: {min(speedups):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
