"""An exact in-memory index from each stored event's 128-bit key to its row's `seq`.

Why: DuckDB's primary key made deduplication exact, but its index (ART) cost about as
much per row as everything else the writer does (10 µs per row with it, 5.6 without, on
the benchmark's events). This index does the same job for the DuckDB store in vectorised
numpy: one open-addressing hash table (linear probing) of the MD5 of each event's key
fields, split in two 64-bit halves, mapping to the stored row's `seq`, a number the
writer gives every row it stores. An upsert tells the writer which stored rows a batch
replaces, so that it deletes exactly those (by `seq`) in the same transaction as it
inserts the new copies.

The probing loop is compiled where a C compiler was at install (`_keyindex.c`, one key
at a time, about a tenth of the numpy rounds' time); the numpy version below is the
fallback and the model the tests hold it to.

The index lives only in memory: the store rebuilds it from the table (one scan, hashing
in DuckDB) before its first write after a start, so what is on disk is always the truth.
Memory: 24 bytes per slot, at most 70 % full, so 34 to 69 bytes per stored event.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

try:
    from eventkeep.store import _keyindex
except ImportError:  # built without a C compiler: the numpy rounds below
    _keyindex = None  # type: ignore[assignment]

MAX_LOAD = 0.7
MIN_SLOTS = 1 << 16

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

_KEY_COLUMNS = ("project_id", "event", "distinct_id", "time_ms", "insert_id")


def key_halves(rows: Any) -> tuple[U64, U64] | None:
    """Each row's key (the MD5 of its key fields, as the DuckDB store's KEY_SQL), in row
    order, hashed in C from the Arrow table's buffers; None where the module is missing or
    a column is not as stored (nulls, another type): the store then hashes in DuckDB."""
    if _keyindex is None:
        return None
    import pyarrow as pa

    expected = (pa.int32(), pa.string(), pa.string(), pa.int64(), pa.string())
    table = rows.select(list(_KEY_COLUMNS))
    if tuple(table.schema.types) != expected or any(column.null_count for column in table.columns):
        return None
    high: U64 = np.empty(table.num_rows, np.uint64)
    low: U64 = np.empty(table.num_rows, np.uint64)
    at = 0
    for batch in table.to_batches():
        n = batch.num_rows
        if not n:
            continue
        project, event, distinct_id, time_ms, insert_id = batch.columns
        _keyindex.keys(
            _values(project, np.int32), *_strings(event), *_strings(distinct_id), _values(time_ms, np.int64),
            *_strings(insert_id), high[at : at + n], low[at : at + n],
        )
        at += n
    return high, low


def _values(array: Any, dtype: Any) -> Any:
    return np.frombuffer(array.buffers()[1], dtype)[array.offset : array.offset + len(array)]


def _strings(array: Any) -> tuple[Any, Any]:
    _, offsets, data = array.buffers()
    return np.frombuffer(offsets, np.int32)[array.offset : array.offset + len(array) + 1], (data or b"")


class KeyIndex:
    """Key (two uint64 halves) -> seq (int64 > 0). Not thread-safe: the writer's own."""

    def __init__(self, expected: int = 0, *, compiled: bool = True) -> None:
        self._compiled = compiled and _keyindex is not None
        slots = MIN_SLOTS
        while slots * MAX_LOAD < expected:
            slots *= 2
        self._allocate(slots)
        self.count = 0

    def _allocate(self, slots: int) -> None:
        self._mask = np.uint64(slots - 1)
        self._high: U64 = np.zeros(slots, np.uint64)
        self._low: U64 = np.zeros(slots, np.uint64)
        self._seq: I64 = np.zeros(slots, np.int64)  # 0: an empty slot

    @property
    def slots(self) -> int:
        return len(self._seq)

    def upsert(self, high: U64, low: U64, seq: I64) -> I64:
        """Point each key at its new seq; return the seq each replaced (0 where new).

        Keys must be distinct within one call (the store resolves repeats in a batch
        first), and seqs must be > 0.
        """
        if len(seq) and int(seq.min()) <= 0:
            raise ValueError("seq must be positive")
        while (self.count + len(seq)) > MAX_LOAD * self.slots:
            self._grow()
        replaced = self._place(high, low, seq, used=self.count)
        self.count += int(np.count_nonzero(replaced == 0))
        return replaced

    def grow_if_fuller_than(self, share: float) -> bool:
        """Double now if more than `share` of the slots are used. For idle moments: a
        doubling re-places every key (about 0.3 µs each), and one that a write triggers
        holds that write for as long."""
        if self.count <= share * self.slots:
            return False
        self._grow()
        return True

    def _grow(self) -> None:
        used = np.flatnonzero(self._seq)
        high, low, seq = self._high[used], self._low[used], self._seq[used]
        self._allocate(self.slots * 2)
        self._place(high, low, seq, used=0)

    def _place(self, high: U64, low: U64, seq: I64, *, used: int) -> I64:
        """Upsert into the table, of which `used` slots are taken; the seqs replaced."""
        if self._compiled:
            replaced = np.zeros(len(seq), np.int64)
            _keyindex.place(
                np.ascontiguousarray(high, np.uint64), np.ascontiguousarray(low, np.uint64),
                np.ascontiguousarray(seq, np.int64), self._high, self._low, self._seq, replaced,
                used,
            )
            return replaced
        return self._place_rounds(high, low, seq)

    def _place_rounds(self, high: U64, low: U64, seq: I64) -> I64:
        """Vectorised linear probing: each round, every key still looking compares itself
        with its current slot; equal keys take the new seq, keys at an empty slot claim it
        (one per slot per round), the others move one slot on."""
        replaced = np.zeros(len(seq), np.int64)
        slot = low & self._mask  # MD5 bits: uniform already
        looking = np.arange(len(seq))
        while len(looking):
            at = slot[looking]
            held = self._seq[at]
            empty = held == 0
            equal = ~empty & (self._high[at] == high[looking]) & (self._low[at] == low[looking])
            if equal.any():
                found = looking[equal]
                replaced[found] = held[equal]
                self._seq[at[equal]] = seq[found]
            if empty.any():
                # Every claimer writes its seq into its slot; the one whose seq stays there
                # has it (seqs are distinct), the others look at the slot again next round.
                claim_at, claimers = at[empty], looking[empty]
                self._seq[claim_at] = seq[claimers]
                won = self._seq[claim_at] == seq[claimers]
                self._high[claim_at[won]] = high[claimers[won]]
                self._low[claim_at[won]] = low[claimers[won]]
                retry = claimers[~won]
            else:
                retry = looking[:0]
            moving = looking[~empty & ~equal]
            slot[moving] = (slot[moving] + np.uint64(1)) & self._mask
            looking = np.concatenate((moving, retry))
        return replaced
