"""Spool write-ahead vs spool-only-on-failure, against a real Elasticsearch.

    python bench/spool_bench.py --es-url URL [--batches 200] [--batch 500]

Writes the same batches three ways and prints, for each, the median and p99 time
from `write()` to its results (what a device waits for) and the events per second
until every event is in Elasticsearch:

- direct: the Elasticsearch sink alone;
- on-failure: SpoolingSink as shipped (spools only what the store cannot take;
  with Elasticsearch up, nothing);
- write-ahead: SpoolingSink(write_ahead=True): every batch committed to the spool
  (synchronous=full, an fsync per batch) and acknowledged, then forwarded.

Also the spool's own append cost per batch, synchronous full and normal.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from types import SimpleNamespace

from collector.events import Event
from collector.sinks.elasticsearch import ElasticsearchSink
from collector.sinks.spooling import SpoolingSink
from collector.spool import Spool


def batches(n: int, size: int, tag: str) -> list[list[Event]]:
    now = int(time.time() * 1000)
    return [
        [
            Event(
                f"{tag}-{b}-{i}", now, now, "bench", "s", "o", "t", float(i), "u", "127.0.0.1:1", 0
            )
            for i in range(size)
        ]
        for b in range(n)
    ]


def es_config(url: str, prefix: str) -> SimpleNamespace:
    return SimpleNamespace(
        es_url=url, es_index_prefix=prefix, es_username=None, es_password=None,
        es_api_key=None, es_ca_certs=None, store_wait=10.0, es_retry_deadline=4.0,
        es_compress=False, es_ilm_policy=None,
    )  # fmt: skip


async def run(mode: str, url: str, n: int, size: int, workdir: str) -> dict[str, float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    sink: object = ElasticsearchSink(es_config(url, prefix), 0)  # type: ignore[arg-type]
    if mode != "direct":
        spool = Spool(f"{workdir}/{mode}.db", max_bytes=10**10)
        sink = SpoolingSink(sink, spool, ack_delay=0.5, write_ahead=mode == "write-ahead")  # type: ignore[arg-type]
    await sink.start()  # type: ignore[attr-defined]
    work = batches(n, size, prefix)
    waits: list[float] = []
    began = time.perf_counter()
    sem = asyncio.Semaphore(4)  # the worker's --max-flushes

    async def one(batch: list[Event]) -> None:
        async with sem:
            t = time.perf_counter()
            await sink.write(batch)  # type: ignore[attr-defined]
            waits.append(time.perf_counter() - t)

    await asyncio.gather(*(one(b) for b in work))
    acked = time.perf_counter() - began
    if mode == "write-ahead":
        while not sink.spool.empty:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
    stored = time.perf_counter() - began
    await sink.close()  # type: ignore[attr-defined]
    waits.sort()
    return {
        "median_ms": statistics.median(waits) * 1000,
        "p99_ms": waits[int(len(waits) * 0.99) - 1] * 1000,
        "acked_eps": n * size / acked,
        "stored_eps": n * size / stored,
    }


def append_cost(sync: str, n: int, size: int, workdir: str) -> float:
    spool = Spool(f"{workdir}/append-{sync}.db", max_bytes=10**10, synchronous=sync)
    spool.open_sync()
    work = batches(n, size, sync)
    t = time.perf_counter()
    for b in work:
        spool.append_sync(b)
    cost = (time.perf_counter() - t) / n * 1000
    spool.close_sync()
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--es-url", required=True)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for sync in ("full", "normal"):
            print(f"spool append, synchronous={sync}: "
                  f"{append_cost(sync, 100, args.batch, workdir):.2f} ms per {args.batch}-event batch")  # fmt: skip
        for r in range(args.rounds):  # interleaved rounds: the box's noise hits all modes
            for mode in ("direct", "on-failure", "write-ahead"):
                f = asyncio.run(run(mode, args.es_url, args.batches, args.batch, workdir))
                print(f"round {r + 1} {mode:12s} ack wait median {f['median_ms']:7.1f} ms"
                      f"  p99 {f['p99_ms']:7.1f} ms  acked {f['acked_eps']:8.0f} ev/s"
                      f"  in ES {f['stored_eps']:8.0f} ev/s")  # fmt: skip


if __name__ == "__main__":
    main()
