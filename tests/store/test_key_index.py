"""The key index against a plain dict: same answers over any sequence of upserts, for the
compiled probing loop and the numpy one alike."""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventkeep.store import key_index
from eventkeep.store.duckdb import _key_halves_sql
from eventkeep.store.key_index import MIN_SLOTS, KeyIndex, key_halves

# CI builds the C module (setup.py): its absence there is a failure, not a skip.
assert key_index._keyindex is not None, "eventkeep.store._keyindex was not built"

implementations = pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])

# Few distinct halves, so that keys collide in their slot (low bits) and share a half.
halves = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**63, 2**64 - 1, MIN_SLOTS, 2 * MIN_SLOTS])
keys = st.tuples(halves, halves)


@implementations
@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(keys, max_size=60, unique=True), max_size=12))
def test_upserts_answer_like_a_dict(compiled: bool, calls: list[list[tuple[int, int]]]) -> None:
    index, model, seq = KeyIndex(compiled=compiled), {}, 1
    for call in calls:
        high = np.array([k[0] for k in call], np.uint64)
        low = np.array([k[1] for k in call], np.uint64)
        seqs = np.arange(seq, seq + len(call), dtype=np.int64)
        seq += len(call)
        replaced = index.upsert(high, low, seqs)
        assert replaced.tolist() == [model.get(k, 0) for k in call]
        model.update(zip(call, seqs.tolist(), strict=True))
        assert index.count == len(model)


@implementations
def test_it_grows_and_keeps_every_key(compiled: bool) -> None:
    rng = np.random.default_rng(7)
    count = 3 * MIN_SLOTS  # several doublings
    high = rng.integers(0, 2**64, count, dtype=np.uint64)
    low = rng.integers(0, 2**64, count, dtype=np.uint64) & np.uint64(0x3FFFF)  # crowded: three keys for every four slots of a 2^18 range
    index = KeyIndex(compiled=compiled)
    for start in range(0, count, 10_000):
        part = slice(start, start + 10_000)
        seqs = np.arange(start + 1, min(start + 10_000, count) + 1, dtype=np.int64)
        assert not index.upsert(high[part], low[part], seqs).any()
    assert index.slots > MIN_SLOTS and index.count == count
    again = index.upsert(high, low, np.arange(count + 1, 2 * count + 1, dtype=np.int64))
    assert again.tolist() == list(range(1, count + 1))
    assert index.count == count


def test_a_sized_index_starts_large_enough() -> None:
    assert KeyIndex(expected=10 * MIN_SLOTS).slots * 0.7 >= 10 * MIN_SLOTS


@implementations
def test_growing_early_keeps_every_key_and_only_past_the_share(compiled: bool) -> None:
    rng = np.random.default_rng(3)
    count = int(0.6 * MIN_SLOTS)
    high = rng.integers(0, 2**64, count, dtype=np.uint64)
    low = rng.integers(0, 2**64, count, dtype=np.uint64)
    index = KeyIndex(compiled=compiled)
    index.upsert(high, low, np.arange(1, count + 1, dtype=np.int64))
    assert not index.grow_if_fuller_than(0.65) and index.slots == MIN_SLOTS
    assert index.grow_if_fuller_than(0.55) and index.slots == 2 * MIN_SLOTS
    again = index.upsert(high, low, np.arange(count + 1, 2 * count + 1, dtype=np.int64))
    assert again.tolist() == list(range(1, count + 1)) and index.count == count


def test_both_loops_build_the_same_table() -> None:
    rng = np.random.default_rng(11)
    high = rng.integers(0, 2**64, 50_000, dtype=np.uint64)
    low = rng.integers(0, 2**64, 50_000, dtype=np.uint64) & np.uint64(0xFFFFF)
    seqs = np.arange(1, 50_001, dtype=np.int64)
    tables = []
    for compiled in (True, False):
        index = KeyIndex(compiled=compiled)
        index.upsert(high[:30_000], low[:30_000], seqs[:30_000])
        replaced = index.upsert(high[20_000:], low[20_000:], seqs[20_000:] + 50_000)
        tables.append((index._seq.copy(), index._high.copy(), index._low.copy(), replaced))
    (seq_c, high_c, low_c, rep_c), (seq_n, high_n, low_n, rep_n) = tables
    assert rep_c.tolist() == rep_n.tolist() and rep_c[:10_000].tolist() == list(range(20_001, 30_001))
    # the same keys in the table; slots may differ only in the order colliding keys took them
    def entries(seq: np.ndarray, high: np.ndarray, low: np.ndarray) -> list[tuple[int, int, int]]:
        used = seq != 0
        return sorted(zip(high[used].tolist(), low[used].tolist(), seq[used].tolist(), strict=True))

    assert entries(seq_c, high_c, low_c) == entries(seq_n, high_n, low_n)


def test_the_compiled_loop_refuses_mismatched_arrays() -> None:
    index = KeyIndex()
    with pytest.raises(ValueError):
        key_index._keyindex.place(np.zeros(3, np.uint64), np.zeros(2, np.uint64), np.ones(3, np.int64),
                                  index._high, index._low, index._seq, np.zeros(3, np.int64), 0)


_texts = st.text(st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**31 - 1), _texts, _texts, st.integers(-(2**63), 2**63 - 1), _texts),
        min_size=1, max_size=40,
    ),
    st.integers(1, 7),
)
def test_keys_hashed_in_c_are_the_stores_keys_hashed_in_duckdb(rows: list[tuple[Any, ...]], cut: int) -> None:
    columns = list(zip(*rows, strict=True))
    types = (pa.int32(), pa.string(), pa.string(), pa.int64(), pa.string())
    names = ("project_id", "event", "distinct_id", "time_ms", "insert_id")
    whole = pa.table({name: pa.array(column, kind) for name, column, kind in zip(names, columns, types, strict=True)})
    # a table of chunks, some sliced out of longer arrays (offsets that do not start at 0)
    table = pa.concat_tables([whole.slice(0, cut), pa.concat_tables([whole, whole]).slice(len(rows) + cut)])
    assert table.num_rows == len(rows)
    computed = key_halves(table)
    assert computed is not None
    assert_duckdb_agrees(table, *computed)


def test_a_key_longer_than_the_stack_buffer_hashes_alike() -> None:
    table = pa.table({
        "project_id": pa.array([1, 2], pa.int32()), "event": ["é" * 3000, "e"], "distinct_id": ["u" * 5000, ""],
        "time_ms": pa.array([1_700_000_000_000, 0], pa.int64()), "insert_id": ["i", "x" * 36],
    })
    computed = key_halves(table)
    assert computed is not None
    assert_duckdb_agrees(table, *computed)


def test_keys_of_columns_not_as_stored_are_left_to_duckdb() -> None:
    table = pa.table({
        "project_id": pa.array([1], pa.int64()), "event": ["e"], "distinct_id": ["u"],
        "time_ms": pa.array([1], pa.int64()), "insert_id": ["i"],
    })
    assert key_halves(table) is None
    assert key_halves(table.set_column(0, "project_id", pa.array([1], pa.int32())).set_column(
        2, "distinct_id", pa.array([None], pa.string()))) is None


def assert_duckdb_agrees(table: pa.Table, high: Any, low: Any) -> None:
    con = duckdb.connect()
    con.register("incoming", table.append_column("seq", pa.array(np.arange(1, table.num_rows + 1), pa.int64())))
    by_duckdb = con.execute(_key_halves_sql("incoming") + " ORDER BY seq").fetchnumpy()
    assert list(high) == list(by_duckdb["high"])
    assert list(low) == list(by_duckdb["low"])
