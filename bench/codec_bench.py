"""Codec micro-benchmark: our ``coap`` against aiocoap, same process, same datagrams.

For each case one operation is "decode the datagram, then encode the message"
(aiocoap cannot re-encode an incoming message, so both sides encode an
equivalent pre-built outgoing one). Each figure is the median over ``--repeat``
timeit runs of the per-operation time, ours and aiocoap's runs alternating, measured by default in process CPU time
(``--clock wall`` for wall time) because the development machine is shared and
wall time there mostly measures other people's jobs. Prints a Markdown table and, as the last
line, ``codec speedup vs aiocoap: N.Nx`` (the minimum over the cases).

    .venv/bin/python bench/codec_bench.py [--repeat 15] [--min-time 0.05] [--clock wall]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
import warnings
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


def interleaved_medians(timers: list[timeit.Timer], repeat: int, min_time: float) -> list[float]:
    """Median per-call time of each timer's statement, the runs alternating so that
    every statement sees the same background load (this machine is shared)."""
    numbers = []
    for t in timers:
        number, elapsed = t.autorange()
        numbers.append(max(1, int(number * min_time / max(elapsed, 1e-9))))
    samples: list[list[float]] = [[] for _ in timers]
    for _ in range(repeat):
        for t, number, out in zip(timers, numbers, samples, strict=True):
            out.append(t.timeit(number) / number)
    return [statistics.median(out) for out in samples]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timeit repetitions (median)")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per run")
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

        # Statements rather than closures, so that no extra Python call is timed.
        ours = timeit.Timer(
            "decode(d); encode(m)",
            globals={"decode": coap.decode, "encode": coap.encode, "d": datagram, "m": message},
            timer=timer,
        )
        aio = timeit.Timer(
            "decode(d); m.encode()",
            globals={"decode": aiocoap.Message.decode, "d": datagram, "m": theirs},
            timer=timer,
        )
        t_ours, t_aio = interleaved_medians([ours, aio], args.repeat, args.min_time)
        speedup = t_aio / t_ours
        speedups.append(speedup)
        print(
            f"| {name} | {len(datagram)} | {t_ours * 1e6:.2f} | {t_aio * 1e6:.2f} | {speedup:.1f}x |"
        )
    print(f"codec speedup vs aiocoap: {min(speedups):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
