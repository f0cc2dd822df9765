"""The bare uvloop echo peer: the ceiling for one Python worker.

Every CON datagram gets an ACK 2.01 carrying the request's Message ID and token,
built by patching a 4-byte header: no option parsing, no body, no dedup. It does no
more work than the kernel's receive and send plus one Python callback, so whatever a
real server (the collector) spends above it is its own cost. NON requests get a NON
2.01 with the same token. Everything else is dropped.

Usage: python bench/peers/echo.py --host H --port P   (prints "ready"; SIGTERM exits)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

import uvloop

_CREATED = 0x41  # 2.01


class EchoProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.mid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 4:
            return
        first = data[0]
        if first >> 6 != 1:
            return
        tkl = first & 0x0F
        if tkl > 8 or len(data) < 4 + tkl:
            return
        kind = (first >> 4) & 0x03
        if kind == 0:  # CON -> piggybacked ACK, same MID and token
            out = bytes((0x60 | tkl, _CREATED)) + data[2 : 4 + tkl]
        elif kind == 1:  # NON -> NON response, own MID, same token
            self.mid = (self.mid + 1) & 0xFFFF
            out = bytes((0x50 | tkl, _CREATED)) + self.mid.to_bytes(2, "big") + data[4 : 4 + tkl]
        else:
            return
        assert self.transport is not None
        self.transport.sendto(out, addr)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, port))
    transport, _ = await loop.create_datagram_endpoint(EchoProtocol, sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5683)
    args = parser.parse_args(argv)
    try:
        uvloop.run(serve(args.host, args.port))
    except OSError as exc:
        print(f"echo: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
