"""The aiocoap peer: the Python reference CoAP server doing the collector's job.

``POST /events`` parses the JSON body (one event or an array) and answers 2.01,
4.00 when it is not JSON; ``GET /health`` answers 2.05. aiocoap's own message layer
does dedup and piggybacking.

Socket buffer: aiocoap opens its UDP socket inside ``create_server_context`` and has
no option for its size, so once it is bound the peer finds it among its own file
descriptors and sets SO_RCVBUF (``--rcvbuf``, the collector's 4 MiB by default); the
kernel default (~208 KiB) would drop bursts that the collector's buffer absorbs.

Usage: python bench/peers/aiocoap_server.py --host H --port P [--rcvbuf BYTES]
(prints "ready")
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys

import aiocoap
import aiocoap.resource as resource


class Events(resource.Resource):
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        try:
            json.loads(request.payload)
        except ValueError:
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=b"bad json")
        return aiocoap.Message(code=aiocoap.CREATED)


class Health(resource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CONTENT, payload=b'{"status":"ok"}')


def _size_sockets(port: int, rcvbuf: int) -> None:
    """Set SO_RCVBUF on this process's UDP sockets bound to ``port``.

    Each open descriptor is duplicated into a socket object (the duplicate shares the
    kernel socket, so the option applies to aiocoap's), checked and closed again.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            dup = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with dup:
            try:
                bound = dup.type == socket.SOCK_DGRAM and dup.getsockname()[1] == port
            except (OSError, IndexError, TypeError):
                bound = False
            if bound:
                dup.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                got = dup.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                print(f"aiocoap: udp receive buffer {got}", file=sys.stderr, flush=True)


async def serve(host: str, port: int, rcvbuf: int) -> None:
    root = resource.Site()
    root.add_resource(["events"], Events())
    root.add_resource(["health"], Health())
    ctx = await aiocoap.Context.create_server_context(root, bind=(host, port))
    _size_sockets(port, rcvbuf)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await ctx.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5683)
    parser.add_argument("--rcvbuf", type=int, default=4 << 20)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.rcvbuf))
    except OSError as exc:
        print(f"aiocoap: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
