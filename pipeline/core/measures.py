"""Mergeable measures: what an aggregate computes per window and group.

Every measure can be updated with one value, merged with another measure of the same spec
(partial aggregates from several source partitions), serialised to compact bytes and read back.
Merging is associative and commutative, so the order partials arrive in never changes a result:

- ``count``: events (or, with a field, events where the field is present);
- ``sum``: exact — integers are summed as Python ints, floats as Shewchuk's non-overlapping
  partials (the algorithm behind ``math.fsum``), so the result is the correctly rounded sum of all
  values whatever the order or split;
- ``min`` / ``max``; ``avg`` (sum + count);
- ``distinct`` ``exact`` (the set of values) or ``hll`` (HyperLogLog registers; merge =
  register-wise max; estimator: Ertl 2017, "New cardinality estimation algorithms for
  HyperLogLog sketches", which is unbiased from 0 to huge cardinalities without empirical bias
  tables).

Numeric measures skip values that are missing, not numbers (booleans are not numbers) or not
finite; distinct skips missing values and ``null``. Skipped values are counted per measure.

Byte format (``encode_measures``): one version byte, then per measure, in spec order, a type
code byte, a varint length and the measure's payload. Integers are (zig-zag) LEB128 varints.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import sub
from typing import Any, Literal

import orjson

FORMAT_VERSION = 1

MeasureKind = Literal["count", "sum", "min", "max", "avg", "distinct"]
DistinctMethod = Literal["exact", "hll"]

_F64 = struct.Struct(">d")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class MeasureDecodeError(ValueError):
    """Bytes that are not measures of the expected specs (other version, other topology)."""


# --- varints ------------------------------------------------------------------------------


def _put_uvarint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _put_svarint(out: bytearray, n: int) -> None:
    _put_uvarint(out, (n << 1) if n >= 0 else ((-n) << 1) - 1)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def uvarint(self) -> int:
        n = shift = 0
        data = self.data
        while True:
            if self.pos >= len(data):
                raise MeasureDecodeError("truncated varint")
            byte = data[self.pos]
            self.pos += 1
            n |= (byte & 0x7F) << shift
            if byte < 0x80:
                return n
            shift += 7

    def svarint(self) -> int:
        z = self.uvarint()
        return (z >> 1) if not z & 1 else -((z + 1) >> 1)

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise MeasureDecodeError("truncated measure")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def f64(self) -> float:
        return _F64.unpack(self.take(8))[0]

    def done(self) -> bool:
        return self.pos == len(self.data)


def _number(value: Any) -> int | float | None:
    """The value as a number, or None when it must be skipped."""
    if type(value) is int:
        return value
    if type(value) is float:
        return value if math.isfinite(value) else None
    return None


# --- exact sums -----------------------------------------------------------------------------


class _ExactSum:
    """An exact sum of ints and floats: ints in one Python int, floats as Shewchuk partials."""

    __slots__ = ("ints", "partials")

    def __init__(self) -> None:
        self.ints = 0
        self.partials: list[float] = []

    def add(self, x: float) -> None:
        if type(x) is int:
            self.ints += x
            return
        partials = self.partials
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]

    def add_many(self, values: Sequence[Any]) -> int:
        """Add the numbers among ``values`` (as ``_number`` reads them); returns how many were
        skipped. Ints are summed first (exact in any order); floats are added in their order,
        since the partials list (which is stored) depends on it."""
        ints = 0
        skipped = 0
        add = self.add
        for value in values:
            kind = type(value)
            if kind is int:
                ints += value
            elif kind is float and math.isfinite(value):
                add(value)
            else:
                skipped += 1
        self.ints += ints
        return skipped

    def merge(self, other: _ExactSum) -> None:
        self.ints += other.ints
        for p in other.partials:
            self.add(p)

    def value(self) -> int | float:
        if not self.partials:
            return self.ints
        return math.fsum([*self.partials, self.ints]) if self.ints else math.fsum(self.partials)

    def write(self, out: bytearray) -> None:
        _put_svarint(out, self.ints)
        _put_uvarint(out, len(self.partials))
        for p in self.partials:
            out += _F64.pack(p)

    @classmethod
    def read(cls, r: _Reader) -> _ExactSum:
        s = cls()
        s.ints = r.svarint()
        s.partials = [r.f64() for _ in range(r.uvarint())]
        return s


# --- the measures ---------------------------------------------------------------------------


class Count:
    code = 1
    __slots__ = ("n", "skipped")

    def __init__(self) -> None:
        self.n = 0
        self.skipped = 0

    def update(self, value: Any) -> None:
        if value is None:
            self.skipped += 1
        else:
            self.n += 1

    def update_many(self, values: Sequence[Any]) -> None:
        """``update`` with each value (order does not matter for a count)."""
        missing = values.count(None)
        self.skipped += missing
        self.n += len(values) - missing

    def add_events(self, n: int) -> None:
        """Count ``n`` events (a count without a field: every event counts)."""
        self.n += n

    def merge(self, other: Count) -> None:
        self.n += other.n
        self.skipped += other.skipped

    def result(self) -> int:
        return self.n

    def write(self, out: bytearray) -> None:
        _put_uvarint(out, self.n)
        _put_uvarint(out, self.skipped)

    @classmethod
    def read(cls, r: _Reader, spec: MeasureSpec) -> Count:
        m = cls()
        m.n = r.uvarint()
        m.skipped = r.uvarint()
        return m


class Sum:
    code = 2
    __slots__ = ("skipped", "total")

    def __init__(self) -> None:
        self.total = _ExactSum()
        self.skipped = 0

    def update(self, value: Any) -> None:
        x = _number(value)
        if x is None:
            self.skipped += 1
        else:
            self.total.add(x)

    def update_many(self, values: Sequence[Any]) -> None:
        """``update`` with each value, in order."""
        self.skipped += self.total.add_many(values)

    def merge(self, other: Sum) -> None:
        self.total.merge(other.total)
        self.skipped += other.skipped

    def result(self) -> int | float:
        return self.total.value()

    def write(self, out: bytearray) -> None:
        _put_uvarint(out, self.skipped)
        self.total.write(out)

    @classmethod
    def read(cls, r: _Reader, spec: MeasureSpec) -> Sum:
        m = cls()
        m.skipped = r.uvarint()
        m.total = _ExactSum.read(r)
        return m


class _Extreme:
    """min or max: the extreme value seen, or None when none was."""

    code = 0
    __slots__ = ("skipped", "value")
    _wins: Any = None

    def __init__(self) -> None:
        self.value: int | float | None = None
        self.skipped = 0

    def update(self, value: Any) -> None:
        x = _number(value)
        if x is None:
            self.skipped += 1
        elif self.value is None or self._wins(x, self.value):
            self.value = x

    def update_many(self, values: Sequence[Any]) -> None:
        """``update`` with each value, in order (of equal values, e.g. 1 and 1.0, the first
        one seen is kept, so the order matters)."""
        for value in values:
            self.update(value)

    def merge(self, other: _Extreme) -> None:
        self.skipped += other.skipped
        if other.value is not None:
            self.update(other.value)

    def result(self) -> int | float | None:
        return self.value

    def write(self, out: bytearray) -> None:
        _put_uvarint(out, self.skipped)
        v = self.value
        if v is None:
            out.append(0)
        elif type(v) is int:
            out.append(1)
            _put_svarint(out, v)
        else:
            out.append(2)
            out += _F64.pack(v)

    @classmethod
    def read(cls, r: _Reader, spec: MeasureSpec) -> _Extreme:
        m = cls()
        m.skipped = r.uvarint()
        tag = r.byte()
        if tag == 1:
            m.value = r.svarint()
        elif tag == 2:
            m.value = r.f64()
        elif tag != 0:
            raise MeasureDecodeError(f"bad {cls.__name__} value tag {tag}")
        return m


class Min(_Extreme):
    code = 3
    __slots__ = ()

    @staticmethod
    def _wins(x: float, current: float) -> bool:
        return x < current


class Max(_Extreme):
    code = 4
    __slots__ = ()

    @staticmethod
    def _wins(x: float, current: float) -> bool:
        return x > current


class Avg:
    code = 5
    __slots__ = ("n", "skipped", "total")

    def __init__(self) -> None:
        self.total = _ExactSum()
        self.n = 0
        self.skipped = 0

    def update(self, value: Any) -> None:
        x = _number(value)
        if x is None:
            self.skipped += 1
        else:
            self.total.add(x)
            self.n += 1

    def update_many(self, values: Sequence[Any]) -> None:
        """``update`` with each value, in order."""
        skipped = self.total.add_many(values)
        self.skipped += skipped
        self.n += len(values) - skipped

    def merge(self, other: Avg) -> None:
        self.total.merge(other.total)
        self.n += other.n
        self.skipped += other.skipped

    def result(self) -> float | None:
        if not self.n:
            return None
        total = self.total.value()
        return total / self.n

    def write(self, out: bytearray) -> None:
        _put_uvarint(out, self.skipped)
        _put_uvarint(out, self.n)
        self.total.write(out)

    @classmethod
    def read(cls, r: _Reader, spec: MeasureSpec) -> Avg:
        m = cls()
        m.skipped = r.uvarint()
        m.n = r.uvarint()
        m.total = _ExactSum.read(r)
        return m


def distinct_key(value: Any) -> str | None:
    """How a value is told apart from others: strings as they are, anything else as JSON (so
    the number 123 and the string "123" are the same value, as in a group-by)."""
    if value is None:
        return None
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)  # as JSON writes it, at any size
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


_KEY_TYPES = frozenset({str, type(None)})


def distinct_keys(values: list[Any]) -> list[str | None]:
    """``distinct_key`` of each value: the values themselves, checked in one pass in C, when
    they are all strings or missing (the usual case)."""
    if _KEY_TYPES.issuperset(map(type, values)):
        return values
    return [value if type(value) is str else distinct_key(value) for value in values]


class DistinctExact:
    code = 6
    __slots__ = ("skipped", "values")

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.skipped = 0

    def update(self, value: Any) -> None:
        key = distinct_key(value)
        if key is None:
            self.skipped += 1
        else:
            self.values.add(key)

    def update_many(self, values: Sequence[Any]) -> None:
        """``update`` with each value."""
        self.update_keys([distinct_key(value) for value in values])

    def update_keys(self, keys: Sequence[str | None]) -> None:
        """``update`` with values already made keys by ``distinct_key`` (None: missing)."""
        unique = set(keys)
        if None in unique:
            unique.discard(None)
            self.skipped += keys.count(None)
        self.values |= unique  # type: ignore[arg-type]

    def merge(self, other: DistinctExact) -> None:
        self.values |= other.values
        self.skipped += other.skipped

    def result(self) -> int:
        return len(self.values)

    def write(self, out: bytearray) -> None:
        _put_uvarint(out, self.skipped)
        _put_uvarint(out, len(self.values))
        for v in sorted(self.values):  # sorted: equal sets give equal bytes
            data = v.encode("utf-8")
            _put_uvarint(out, len(data))
            out += data

    @classmethod
    def read(cls, r: _Reader, spec: MeasureSpec) -> DistinctExact:
        m = cls()
        m.skipped = r.uvarint()
        m.values = {r.take(r.uvarint()).decode("utf-8") for _ in range(r.uvarint())}
        return m


# --- HyperLogLog ----------------------------------------------------------------------------


def hash64(data: bytes) -> int:
    # The stored registers depend on this hash: it must never change.
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


_REGISTER_MEMOS: dict[int, dict[str, tuple[int, int]]] = {}
"""Per precision: distinct key → (register index, rank), for recently seen keys. Hashing
(~0.8 µs) was most of the cost of a HyperLogLog update, and the same identities come back in
every batch, window and aggregate (active users per minute and per day hash the same ones). A
pure function's memo, so it changes no result; each is emptied when it reaches
``_REGISTER_MEMO_MAX`` keys (~3 MB)."""
_REGISTER_MEMO_MAX = 1 << 14


def _register_memo(p: int) -> dict[str, tuple[int, int]]:
    memo = _REGISTER_MEMOS.get(p)
    if memo is None or len(memo) >= _REGISTER_MEMO_MAX:
        memo = _REGISTER_MEMOS[p] = {}
    return memo


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y = 1.0
    z = x
    while True:
        x *= x
        previous = z
        z += x * y
        y += y
        if z == previous:
            return z


def _tau(x: float) -> float:
    if x == 0.0 or x == 1.0:
        return 0.0
    y = 1.0
    z = 1.0 - x
    while True:
        x = math.sqrt(x)
        previous = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == previous:
            return z / 3.0


class HyperLogLog:
    """A HyperLogLog sketch with 2**p one-byte registers over a 64-bit hash.

    Registers are kept sparse (a dict of the non-zero ones) while few are set, so the many small
    groups of a window stay small; past ``m / 128`` set registers they become a dense bytearray.
    """

    code = 7
    __slots__ = ("dense", "p", "skipped", "sparse")

    def __init__(self, p: int = 14) -> None:
        if not 4 <= p <= 18:
            raise ValueError("HyperLogLog precision must be between 4 and 18")
        self.p = p
        self.sparse: dict[int, int] | None = {}
        self.dense: bytearray | None = None
        self.skipped = 0

    @property
    def m(self) -> int:
        return 1 << self.p

    def update(self, value: Any) -> None:
        key = distinct_key(value)
        if key is None:
            self.skipped += 1
            return
        self.add_hash(hash64(key.encode("utf-8")))

    def update_many(self, values: Sequence[Any]) -> None:
        """``update`` with each value."""
        self.update_keys([distinct_key(value) for value in values])

    def update_keys(self, keys: Sequence[str | None]) -> None:
        """``update`` with values already made keys by ``distinct_key`` (None: missing).
        Registers only keep maxima, so order and repeats do not matter: each distinct key of
        the batch is looked at once."""
        unique = set(keys)
        if None in unique:
            unique.discard(None)
            self.skipped += keys.count(None)
        q = 64 - self.p
        low_bits = (1 << q) - 1
        sparse_limit = self.m >> 7
        memo = _register_memo(self.p)
        for key in unique:
            register = memo.get(key)
            if register is None:
                h = hash64(key.encode("utf-8"))  # type: ignore[union-attr]
                register = memo[key] = (h >> q, q - (h & low_bits).bit_length() + 1)
            index, rank = register
            # ``_set``, inlined: this runs for every distinct value of every batch.
            sparse = self.sparse
            if sparse is not None:
                if rank > sparse.get(index, 0):
                    sparse[index] = rank
                    if len(sparse) > sparse_limit:
                        self._densify()
            else:
                dense = self.dense
                assert dense is not None
                if rank > dense[index]:  # noqa: PLR1730 - a max() call costs more, per key
                    dense[index] = rank

    def add_hash(self, h: int) -> None:
        q = 64 - self.p
        index = h >> q
        rank = q - (h & ((1 << q) - 1)).bit_length() + 1
        self._set(index, rank)

    def _set(self, index: int, rank: int) -> None:
        sparse = self.sparse
        if sparse is not None:
            if rank > sparse.get(index, 0):
                sparse[index] = rank
                if len(sparse) > self.m >> 7:
                    self._densify()
        else:
            dense = self.dense
            assert dense is not None
            dense[index] = max(dense[index], rank)

    def _densify(self) -> None:
        assert self.sparse is not None
        dense = bytearray(self.m)
        for index, rank in self.sparse.items():
            dense[index] = rank
        self.dense = dense
        self.sparse = None

    def registers(self) -> bytearray:
        if self.dense is not None:
            return bytearray(self.dense)
        dense = bytearray(self.m)
        for index, rank in (self.sparse or {}).items():
            dense[index] = rank
        return dense

    def merge(self, other: HyperLogLog) -> None:
        if other.p != self.p:
            raise ValueError("cannot merge HyperLogLog sketches of different precisions")
        self.skipped += other.skipped
        if other.sparse is not None:
            for index, rank in other.sparse.items():
                self._set(index, rank)
            return
        assert other.dense is not None
        if self.sparse is not None:
            if not self.sparse:  # empty (the combiner merges into a new sketch): a copy
                self.sparse = None
                self.dense = bytearray(other.dense)
                return
            self._densify()
        assert self.dense is not None
        self.dense = _register_max(self.dense, other.dense)

    def estimate(self) -> float:
        m = self.m
        q = 64 - self.p
        histogram = [0] * (q + 2)
        if self.sparse is not None:
            histogram[0] = m - len(self.sparse)
            for rank in self.sparse.values():
                histogram[rank] += 1
        else:
            dense = self.dense
            assert dense is not None
            # Counted in C, one pass per rank (a Python loop over the 2**p registers cost
            # ~1 ms), up to the highest rank there is.
            counted = 0
            for rank in range(q + 2):
                if counted == m:
                    break
                histogram[rank] = dense.count(rank)
                counted += histogram[rank]
            if counted != m:
                raise ValueError("HyperLogLog register out of range")
        if histogram[0] == m:
            return 0.0
        z = m * _tau(1.0 - histogram[q + 1] / m)
        for k in range(q, 0, -1):
            z = (z + histogram[k]) * 0.5
        z += m * _sigma(histogram[0] / m)
        return m * m / (2.0 * math.log(2.0) * z)

    def result(self) -> int:
        return round(self.estimate())

    def write(self, out: bytearray) -> None:
        _put_uvarint(out, self.skipped)
        out.append(self.p)
        # The set registers as (index delta, rank) pairs when they are under a third, else all
        # the registers. Every change of a window is written (and its live partials), so a
        # dense sketch's pairs are found in C: a Python loop over its 2**p registers cost ~1 ms.
        sparse = self.sparse
        if sparse is not None:
            indices = sorted(sparse)
            if len(indices) * 3 >= self.m:
                out.append(1)
                out += self.registers()
                return
            deltas = list(map(sub, indices, [0, *indices[:-1]]))
            ranks: Sequence[int] = [sparse[i] for i in indices]
        else:
            dense = self.dense
            assert dense is not None
            if (self.m - dense.count(0)) * 3 >= self.m:
                out.append(1)
                out += dense
                return
            # The runs of zeros before each set register: a delta is its run + 1 (the first
            # one's, from index 0, is its run).
            runs = dense.translate(_SET_AS_ONE).split(b"\x01")[:-1]
            deltas = [len(run) + 1 for run in runs]
            if deltas:
                deltas[0] -= 1
            ranks = dense.translate(None, b"\x00")
        out.append(0)  # sparse: (index delta, rank) pairs
        _put_uvarint(out, len(deltas))
        if not deltas or max(deltas) < 0x80:
            # Every delta is a one-byte varint (the usual case): the pairs are the deltas
            # and the ranks interleaved, which slice assignment does in C.
            pairs = bytearray(2 * len(deltas))
            pairs[0::2] = deltas
            pairs[1::2] = ranks
            out += pairs
        else:
            for delta, rank in zip(deltas, ranks):
                _put_uvarint(out, delta)
                out.append(rank)

    @classmethod
    def read(cls, r: _Reader, spec: MeasureSpec) -> HyperLogLog:
        skipped = r.uvarint()
        p = r.byte()
        if p != spec.precision:
            raise MeasureDecodeError(f"HyperLogLog precision {p}, expected {spec.precision}")
        m = cls(p)
        m.skipped = skipped
        mode = r.byte()
        if mode == 0:
            sparse = _read_sparse_registers(r)
            if sparse and max(sparse) >= m.m:
                raise MeasureDecodeError("HyperLogLog register index out of range")
            m.sparse = sparse
            if len(sparse) > m.m >> 7:
                m._densify()
        elif mode == 1:
            m.sparse = None
            m.dense = bytearray(r.take(m.m))
        else:
            raise MeasureDecodeError(f"bad HyperLogLog mode {mode}")
        return m


_SET_AS_ONE = bytes([0] + [1] * 255)
"""``bytes.translate`` table: a set register (any rank) becomes 1, an unset one stays 0."""


def _read_sparse_registers(r: _Reader) -> dict[int, int]:
    """(index delta, rank) pairs. Every partial the combiner merges is read, with up to
    2**p / 3 pairs: when every delta is one byte (what ``write`` almost always makes) the
    deltas and ranks are the even and odd bytes, taken apart in C; else ``_Reader.uvarint``
    and ``byte``, inlined."""
    data = r.data
    count = r.uvarint()
    pos = r.pos
    pairs = data[pos : pos + 2 * count]
    if len(pairs) == 2 * count and (not count or max(pairs[0::2]) < 0x80):
        r.pos = pos + 2 * count
        return dict(zip(accumulate(pairs[0::2]), pairs[1::2]))
    index = 0
    sparse: dict[int, int] = {}
    try:
        for _ in range(count):
            byte = data[pos]
            pos += 1
            delta = byte & 0x7F
            shift = 7
            while byte >= 0x80:
                byte = data[pos]
                pos += 1
                delta |= (byte & 0x7F) << shift
                shift += 7
            index += delta
            sparse[index] = data[pos]
            pos += 1
    except IndexError:
        raise MeasureDecodeError("truncated HyperLogLog registers") from None
    r.pos = pos
    return sparse


def _register_max(a: bytearray, b: bytearray) -> bytearray:
    """The register-wise maximum of two sketches' registers (equal lengths).

    A Python loop over 2**p registers cost ~0.6 ms per merge; this takes a few big-integer
    operations instead. Ranks are below 0x80, so in each byte ``(a | 0x80) - b`` neither
    borrows from the next byte nor loses its top bit unless b > a: the top bits mark where a
    wins. Registers that are not ranks (only from corrupt state) take the plain loop."""
    x = int.from_bytes(a, "big")
    y = int.from_bytes(b, "big")
    high = int.from_bytes(b"\x80" * len(a), "big")
    if (x | y) & high:
        return bytearray(map(max, a, b))
    a_wins = ((((x | high) - y) & high) >> 7) * 0xFF  # 0xFF in every byte where a >= b
    return bytearray(((x & a_wins) | (y & ~a_wins)).to_bytes(len(a), "big"))


Measure = Count | Sum | Min | Max | Avg | DistinctExact | HyperLogLog
_BY_CODE: dict[int, type] = {
    c.code: c for c in (Count, Sum, Min, Max, Avg, DistinctExact, HyperLogLog)
}


@dataclass(frozen=True, slots=True)
class MeasureSpec:
    id: str
    kind: MeasureKind
    field: str | None = None
    """Dotted path of the value (``count`` may go without: it then counts events)."""
    method: DistinctMethod = "exact"
    precision: int = 14
    """HyperLogLog precision p: 2**p registers, standard error ~1.04 / sqrt(2**p)."""

    def new(self) -> Measure:
        if self.kind == "distinct":
            return HyperLogLog(self.precision) if self.method == "hll" else DistinctExact()
        return _KINDS[self.kind]()

    @property
    def measure_class(self) -> type:
        if self.kind == "distinct":
            return HyperLogLog if self.method == "hll" else DistinctExact
        return _KINDS[self.kind]


_KINDS: dict[str, type] = {"count": Count, "sum": Sum, "min": Min, "max": Max, "avg": Avg}


def encode_measures(measures: Sequence[Measure]) -> bytes:
    out = bytearray([FORMAT_VERSION])
    for measure in measures:
        payload = bytearray()
        measure.write(payload)
        out.append(measure.code)
        _put_uvarint(out, len(payload))
        out += payload
    return bytes(out)


def decode_measures(specs: Sequence[MeasureSpec], data: bytes) -> list[Measure]:
    """Measures from ``encode_measures`` bytes; raises ``MeasureDecodeError`` on a mismatch."""
    if not data or data[0] != FORMAT_VERSION:
        raise MeasureDecodeError(f"unknown measures format {data[:1]!r}")
    r = _Reader(data, 1)
    measures: list[Measure] = []
    for spec in specs:
        cls = spec.measure_class
        code = r.byte()
        if code != cls.code:
            raise MeasureDecodeError(f"measure {spec.id!r}: type code {code}, expected {cls.code}")
        payload = _Reader(r.take(r.uvarint()))
        measures.append(cls.read(payload, spec))
        if not payload.done():
            raise MeasureDecodeError(f"measure {spec.id!r}: trailing bytes")
    if not r.done():
        raise MeasureDecodeError("more measures than specs")
    return measures


def merge_all(specs: Sequence[MeasureSpec], encoded: Sequence[bytes]) -> list[Measure]:
    """One merged measure list from several encoded partials of the same specs."""
    merged = [spec.new() for spec in specs]
    for data in encoded:
        for target, part in zip(merged, decode_measures(specs, data), strict=True):
            target.merge(part)  # type: ignore[arg-type]
    return merged
