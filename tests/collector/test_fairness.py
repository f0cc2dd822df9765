"""The fairly shared table (collector.fairness): eviction picks the heaviest owner."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from collector.fairness import FairTable


def test_when_full_the_heaviest_owners_oldest_entry_goes() -> None:
    t: FairTable[int, tuple[str, float, str]] = FairTable(4)
    t.put(1, ("a", 0.0, "a1"))
    t.put(2, ("b", 1.0, "b1"))
    t.put(3, ("b", 2.0, "b2"))
    t.put(4, ("b", 3.0, "b3"))
    assert t.put(5, ("c", 4.0, "c1")) == 2  # b holds most: its oldest goes, not a's older one
    assert 1 in t and 2 not in t and 5 in t


def test_an_owner_at_the_top_evicts_its_own_entries() -> None:
    t: FairTable[int, tuple[str, float, str]] = FairTable(3)
    t.put(1, ("a", 0.0, ""))
    for k in range(2, 50):
        t.put(k, ("b", float(k), ""))
    assert 1 in t and len(t) == 3 and t.owned("b") == 2


def test_expiry_goes_in_arrival_order_and_forgets_empty_owners() -> None:
    t: FairTable[int, tuple[str, float, str]] = FairTable(10)
    t.put(1, ("a", 0.0, ""))
    t.put(2, ("b", 5.0, ""))
    assert t.expire(1.0) == 1
    assert 1 not in t and t.owners() == 1


def test_replacing_a_value_keeps_its_place_and_owner() -> None:
    t: FairTable[int, tuple[str, float, str]] = FairTable(10)
    t.put(1, ("a", 0.0, "old"))
    t.put(1, ("z", 9.0, "new"))
    assert t.get(1) == ("a", 0.0, "new")
    assert t.owned("z") == 0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "put", "pop", "expire"]), st.integers(0, 30), st.integers(0, 4)
        ),
        max_size=300,
    )
)
def test_counts_stay_consistent_and_a_dominant_owner_pays_for_evictions(
    ops: list[tuple[str, int, int]],
) -> None:
    """Against a model: the table never exceeds capacity, owners' counts add up, an
    eviction takes its victim's oldest entry, and while one owner holds more than half
    the table, every eviction takes its entry."""
    t: FairTable[tuple[int, int], tuple[int, float, int]] = FairTable(8)
    now = 0.0
    for op, key, owner in ops:
        now += 1.0
        if op == "put":
            counts = {o: t.owned(o) for o in range(5)}
            oldest: dict[int, tuple[int, int]] = {}
            for k, (o, _when, _value) in t.items():  # arrival order
                oldest.setdefault(o, k)
            evicted = t.put((owner, key), (owner, now, key))
            if evicted is not None:
                after = {o: t.owned(o) for o in range(5)}
                victims = [o for o in range(5) if after[o] < counts[o] + (o == owner)]
                assert victims == [evicted[0]]
                assert evicted == oldest[evicted[0]]  # the victim's oldest entry went
                dominant = [o for o, c in counts.items() if c > 4]
                if dominant:
                    assert victims == dominant
        elif op == "pop":
            t.pop((owner, key))
        else:
            t.expire(now - 5.0)
        assert len(t) <= 8
        assert sum(t.owned(o) for o in range(5)) == len(t)
        assert all(t.get(k) is not None for k, _ in t.items())
