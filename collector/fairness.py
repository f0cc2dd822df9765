"""A bounded table shared fairly between owners (source addresses or identities).

The exchange layer's dedup entries and the block-wise transfers are state that many
devices share in one worker. A plain bounded table forgets its oldest entry when
full, so one host that floods it with unique keys evicts every other device's state
(seen: 1M unique (port, MID) pairs from one address, after which an honest device's
retransmission was stored twice). Here each entry is charged to an owner, and when
the table is full the entry that goes is the oldest entry of the heaviest owner: the
newcomer itself when it holds at least as many entries as the heaviest owner known,
else that heaviest owner. So a flood from one owner evicts only its own entries, and
an owner loses state to others only while it holds the most.

"The heaviest owner known" is kept in O(1): an owner whose count passes it takes its
place; when it runs out of entries, the owner of the oldest entry overall takes over.
While one owner dominates (the flood this guards against) it is exactly the
heaviest; among owners of similar size eviction is close to oldest-first, which is
what fairness asks there anyway.

Entries also expire in arrival order (`expire`): the caller's keys arrive with a
monotonic time, so the oldest entry overall is at the front of the table and the
oldest entry of each owner at the front of that owner's queue.

Cost per entry: a dict insert and a list append, O(1). Memory: at most `capacity`
entries, plus one small list per owner that holds any.

Entries are the caller's own tuples, (owner, arrival time, ...): the table reads the
owner from item 0 and the time from item 1 and leaves the rest alone. One tuple per
entry rather than the table's wrapper around the caller's value: on the dedup
table's path that is a tuple fewer to build, track and free for every request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping
from typing import Any, Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
E = TypeVar("E", bound=tuple[Any, ...])  # an entry: (owner, time, ...)

__all__ = ["FairTable"]


class FairTable(Generic[K, E]):
    """At most `capacity` entries key -> (owner, time, ...); see the module text."""

    __slots__ = ("_entries", "_heavy", "_heavy_queue", "_queues", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # key -> (owner, time, ...), in arrival order.
        self._entries: OrderedDict[K, E] = OrderedDict()
        # owner -> [head, key, key, ...]: its live keys, oldest first, from index
        # head + 1. A list with a head offset rather than a deque: a deque costs ~600
        # bytes even when empty, and most owners hold one or two entries.
        self._queues: dict[Hashable, list[Any]] = {}
        self._heavy: Hashable = None  # the heaviest owner known (see the module text)
        self._heavy_queue: list[Any] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def entries(self) -> Mapping[K, E]:
        """The entries, read-only, in arrival order: for a caller that tests keys on a
        hot path without a method call per test."""
        return self._entries

    def get(self, key: K) -> E | None:
        return self._entries.get(key)

    def owned(self, owner: Hashable) -> int:
        """How many entries `owner` holds."""
        queue = self._queues.get(owner)
        return len(queue) - 1 - queue[0] if queue is not None else 0

    def owners(self) -> int:
        return len(self._queues)

    def items(self) -> Iterator[tuple[K, E]]:
        return iter(self._entries.items())

    def put(self, key: K, entry: E) -> K | None:
        """Add an entry (or replace one, keeping its place, owner and time: only the
        items after those two change). Returns the key evicted to make room, if any."""
        old = self._entries.get(key)
        if old is not None:
            self._entries[key] = cast(E, (*old[:2], *entry[2:]))
            return None
        return self.add(key, entry)

    def add(self, key: K, entry: E) -> K | None:
        """`put` for a key the caller knows is absent (one lookup fewer: the dedup
        table's hot path has just looked). Returns the key evicted, if any."""
        entries = self._entries
        owner = entry[0]
        queue = self._queues.get(owner)
        if queue is None:
            return self._add_slowly(key, owner, entry)
        # The common cases inline: an owner that holds entries, with room or with a
        # victim (see _evict) that keeps an entry after this one goes. While any
        # owner holds entries, some owner is the heaviest known.
        heavy: list[Any] = self._heavy_queue  # type: ignore[assignment]
        if len(entries) < self.capacity:
            entries[key] = entry
            queue.append(key)
            if heavy is not queue and len(queue) - queue[0] > len(heavy) - heavy[0]:
                self._heavy, self._heavy_queue = owner, queue
            return None
        victim = queue if len(queue) - queue[0] >= len(heavy) - heavy[0] else heavy
        head = victim[0] + 1
        if head + 1 >= len(victim):  # its last entry: the owner goes too
            return self._add_slowly(key, owner, entry)
        evicted: K = victim[head]
        del entries[evicted]
        victim[head] = None
        if head > 8 and head * 2 > len(victim):
            del victim[1 : head + 1]  # compact: amortised O(1)
            head = 0
        victim[0] = head
        entries[key] = entry
        queue.append(key)
        if heavy is not queue and len(queue) - queue[0] > len(heavy) - heavy[0]:
            self._heavy, self._heavy_queue = owner, queue
        return evicted

    def _add_slowly(self, key: K, owner: Hashable, entry: E) -> K | None:
        """`add` for a new owner, or when the table is full."""
        entries = self._entries
        queues = self._queues
        queue = queues.get(owner)
        if queue is None:
            queue = queues[owner] = [0]
        evicted = None
        if len(entries) >= self.capacity:
            evicted = self._evict(owner, queue)
            if owner not in queues:  # the newcomer's last entry went
                queue = queues[owner] = [0]
        entries[key] = entry
        queue.append(key)
        heavy = self._heavy_queue
        if heavy is not queue and (heavy is None or len(queue) - queue[0] > len(heavy) - heavy[0]):
            self._heavy, self._heavy_queue = owner, queue
        return evicted

    def replace(self, key: K, entry: E) -> None:
        """Replace an existing entry (no-op when it is gone) by one that carries the
        owner and time it was added with: the caller's promise, unchecked, as this
        is the dedup table's hot path (`put` is the checked way)."""
        entries = self._entries
        if key in entries:
            entries[key] = entry

    def pop(self, key: K) -> E | None:
        """Remove an entry; the entry, or None when absent."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        owner = entry[0]
        queue = self._queues[owner]
        if queue[queue[0] + 1] == key:
            self._popleft(owner, queue)
        else:  # rare: removed out of order (a finished transfer)
            queue.remove(key)
        return entry

    def expire(self, horizon: float) -> int:
        """Drop entries that arrived at or before `horizon`; how many went."""
        entries = self._entries
        gone = 0
        while entries:
            key = next(iter(entries))
            entry = entries[key]
            if entry[1] > horizon:
                break
            del entries[key]
            owner = entry[0]
            self._popleft(owner, self._queues[owner])  # the oldest overall is its owner's
            gone += 1
        return gone

    def oldest(self) -> tuple[K, E] | None:
        for item in self._entries.items():
            return item
        return None

    def _evict(self, newcomer: Hashable, queue: list[Any]) -> K:
        """Remove the oldest entry of the newcomer, when it holds at least as many as
        the heaviest owner known, else of that owner."""
        heavy = self._heavy_queue
        if heavy is None or len(queue) - queue[0] >= len(heavy) - heavy[0]:
            victim, vqueue = newcomer, queue
        else:
            victim, vqueue = self._heavy, heavy
        if len(vqueue) - vqueue[0] <= 1:  # no entry of its own: take the oldest overall
            key = next(iter(self._entries))
            victim = self._entries[key][0]
            vqueue = self._queues[victim]
        key = vqueue[vqueue[0] + 1]
        del self._entries[key]
        self._popleft(victim, vqueue)
        return key

    def _popleft(self, owner: Hashable, queue: list[Any]) -> None:
        """Forget the owner's oldest key (already gone from the entries)."""
        head = queue[0] + 1
        if head + 1 >= len(queue):  # that was its last entry
            del self._queues[owner]
            if self._heavy_queue is queue:  # the oldest entry's owner takes over
                self._heavy = self._heavy_queue = None
                for first in self._entries.values():
                    self._heavy = first[0]
                    self._heavy_queue = self._queues[first[0]]
                    break
            return
        queue[head] = None
        if head > 8 and head * 2 > len(queue):
            del queue[1 : head + 1]  # compact: amortised O(1)
            head = 0
        queue[0] = head
