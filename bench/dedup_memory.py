"""Memory of a full dedup table (the exchange layer's FairTable), as README states it.

Fills an ExchangeLayer of --capacity entries with answered exchanges (a 2.01 with a
4-byte token, as most are) from --owners source addresses, and prints the traced
bytes per entry. Run: python bench/dedup_memory.py --owners 1000 200000
"""

from __future__ import annotations

import argparse
import tracemalloc

from collector.exchange import ExchangeLayer
from collector.responses import header


def measure(capacity: int, owners: int) -> tuple[float, float]:
    """(MiB, bytes per entry) of a full table, peers and answers included."""
    tracemalloc.start()
    layer = ExchangeLayer(lambda _d, _p: None, capacity=capacity, ack_delay=0.5)
    hosts = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(owners)]
    for i in range(capacity):
        host = hosts[i % owners]
        peer = (host, 1024 + (i // owners) % 60000)
        mid = i & 0xFFFF
        layer.remember((peer, mid), host, float(i), 40, header(2, 65, mid, b"\x01\x02\x03\x04"))
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return used / 2**20, used / capacity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=200_000)
    parser.add_argument("owners", type=int, nargs="*", default=[1, 1000, 200_000])
    args = parser.parse_args()
    for owners in args.owners:
        mib, per = measure(args.capacity, owners)
        print(f"{args.capacity} entries from {owners} sources: {mib:.1f} MiB, {per:.0f} B/entry")


if __name__ == "__main__":
    main()
