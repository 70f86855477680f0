"""Example keys: how a streamed example is named, hashed and looked up.

A stream has no integer index, so USEFUL addresses its examples by a stable key that every
item carries: WebDataset's ``__key__``, an id column of a Hugging Face dataset, or whatever a
user function reads from an item. A key is a string or an integer (int64); all the keys of one
selection are of one kind.

Keys are looked up through 64-bit hashes (BLAKE2b-64 of the UTF-8 text for strings,
SplitMix64 of the two's-complement value for integers) in an open-addressing table of
``uint64`` with linear probing, at most half full: O(1) per lookup, 16 to 32 bytes per key.

In memory, string keys are a numpy ``object`` array of Python strings (a fixed-width ``<U``
array costs ``N`` times the longest key and drops trailing NULs); in a selection file they are
their UTF-8 bytes (lone surrogates kept, as Python's ``"surrogatepass"``) concatenated, with
``N + 1`` int64 offsets (`encode_keys`, `decode_keys`), so a file costs the keys' total
length and gives every string back exactly.
Two distinct keys of one selection that share a hash are detected when the table or the
fingerprint is built (a ``ValueError`` names them). A key outside the selection matches a
selected one only if its hash equals one of the ``|S|`` selected hashes: for ``M`` such keys
the chance that any does is at most ``M |S| / 2**64`` (2.7e-4 for ``M = |S| = 10**8``).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import torch

__all__ = [
    "DEFAULT_KEY",
    "Key",
    "KeySpec",
    "KeyTable",
    "check_distinct",
    "decode_keys",
    "describe_key",
    "encode_keys",
    "hash_key",
    "hash_keys",
    "is_string_keys",
    "key_at",
    "key_kind",
    "keyed_fingerprint",
    "keys_array",
    "normalize_key",
    "read_key",
]

#: The field of a WebDataset sample that names it (the tar member's path without extension).
DEFAULT_KEY = "__key__"

Key: TypeAlias = "str | int"
#: How to read an item's key: the name of a field of dict items, or a function item -> key.
KeySpec: TypeAlias = "str | Callable[[Any], Any]"

_MASK64 = (1 << 64) - 1
_CHUNK = 1 << 20  # hashes inserted per vectorized round of `KeyTable.add`
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def normalize_key(value: Any) -> Key:
    """A key as a plain ``str`` or ``int`` (numpy integers and 0-d integer tensors too).

    Raises:
        TypeError: for anything else (bools, floats, bytes, ...).
        ValueError: for an integer outside int64.
    """
    if type(value) is str:
        return value
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        value = int(value)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"an integer key should fit in int64, but got key {value}")
        return value
    raise TypeError(
        f"an example key should be a string or an integer, but got {value!r} of type "
        f"{type(value).__name__}"
    )


def key_kind(value: Key) -> Literal["str", "int"]:
    """``"str"`` or ``"int"``: the kind of a normalized key."""
    return "str" if isinstance(value, str) else "int"


def describe_key(key: KeySpec) -> str:
    """How a key spec reads in messages and in `Selection.params`: the field name, or the
    function's qualified name."""
    if isinstance(key, str):
        return key
    return f"<function {getattr(key, '__qualname__', type(key).__name__)}>"


def _fields(item: Any) -> str:
    if isinstance(item, Mapping):
        return f"an item with fields {sorted(map(str, item))}"
    if isinstance(item, Sequence) and not isinstance(item, str | bytes):
        return f"a {type(item).__name__} item of {len(item)} entries"
    return f"an item of type {type(item).__name__}"


def read_key(item: Any, key: KeySpec) -> Key:
    """The key of ``item``: ``item[key]`` for a field name, ``key(item)`` for a function.

    Raises:
        ValueError: if the item has no such field (the message shows the item's fields).
        TypeError: if the key is not a string or an integer.
    """
    if isinstance(key, str):
        if not isinstance(item, Mapping) or key not in item:
            hint = (
                "pass key= the field that names each example (WebDataset: '__key__'; a "
                "Hugging Face dataset: its id column)"
                if isinstance(item, Mapping)
                else "for items that are not dicts pass key= a function item -> key, e.g. "
                "key=lambda item: item[2]"
            )
            raise ValueError(
                f"every item should carry its example key in the field {key!r}, but got "
                f"{_fields(item)}; {hint}"
            )
        value = item[key]
    else:
        value = key(item)
    try:
        return normalize_key(value)
    except TypeError as err:
        raise TypeError(f"key {describe_key(key)!r}: {err}") from None


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def hash_key(value: Key) -> int:
    """The nonzero 64-bit hash of a normalized key (0 marks an empty slot in `KeyTable`).

    Example:
        >>> hash_key("a") == hash_key("a") != hash_key("b")
        True
        >>> 0 < hash_key(7) < 2**64
        True
    """
    if isinstance(value, str):
        digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8)
        h = int.from_bytes(digest.digest(), "little")
    else:
        h = _splitmix64(value & _MASK64)
    return h or 1


def is_string_keys(keys: np.ndarray) -> bool:
    """Whether a `keys_array` holds string keys (else int64 ones)."""
    return keys.dtype.kind in "OUT"


def key_at(keys: np.ndarray, i: int) -> Key:
    """Entry ``i`` of a `keys_array` as a plain ``str`` or ``int`` (for messages)."""
    value: Key = keys[[i]].tolist()[0]
    return value


def hash_keys(keys: np.ndarray) -> np.ndarray:
    """`hash_key` of every entry of a `keys_array`: ``(n,)`` uint64 (vectorized for ints)."""
    if is_string_keys(keys):
        return np.fromiter(map(hash_key, keys.tolist()), dtype=np.uint64, count=keys.shape[0])
    x = keys.astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    x[x == 0] = 1
    return x


def keys_array(keys: Iterable[Any], *, name: str = "keys") -> np.ndarray:
    """Keys as one numpy array: int64 for integer keys, ``object`` (Python ``str``) for strings.

    Raises:
        TypeError: for a key that is neither, or a mix of strings and integers.

    Example:
        >>> keys_array(["k1", "k1\\x00"]).tolist()  # a trailing NUL is kept
        ['k1', 'k1\\x00']
    """
    if isinstance(keys, np.ndarray) and keys.ndim == 1:
        if keys.dtype.kind in "UT":
            return keys.astype(object)
        if keys.dtype == object and all(type(k) is str for k in keys.tolist()):
            return keys  # already a string keys_array (the common case: a Selection's own)
        if keys.dtype.kind == "i" or (keys.dtype.kind == "u" and keys.dtype.itemsize < 8):
            return keys.astype(np.int64)
    values = [normalize_key(k) for k in keys]
    kinds = {key_kind(v) for v in values}
    if len(kinds) > 1:
        raise TypeError(
            f"{name} should be all strings or all integers, but got both "
            f"(e.g. {next(v for v in values if isinstance(v, str))!r} and "
            f"{next(v for v in values if isinstance(v, int))!r})"
        )
    if kinds == {"str"}:
        strings = np.empty(len(values), dtype=object)
        strings[:] = values
        return strings
    return np.array(values, dtype=np.int64)


def encode_keys(keys: np.ndarray) -> dict[str, np.ndarray]:
    """A `keys_array` as the members of a selection file: ``{"keys": int64}`` for integer
    keys; ``{"keys_utf8": uint8, "keys_offsets": int64 (n + 1,)}`` for strings, key ``i``
    being ``keys_utf8[offsets[i]:offsets[i + 1]]``."""
    if not is_string_keys(keys):
        return {"keys": np.ascontiguousarray(keys, dtype=np.int64)}
    encoded = [k.encode("utf-8", "surrogatepass") for k in keys.tolist()]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return {
        "keys_utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        "keys_offsets": offsets,
    }


def decode_keys(utf8: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The string `keys_array` that `encode_keys` stored as ``utf8`` and ``offsets``.

    Raises:
        ValueError: if the offsets are not ``0``, non-decreasing, ending at ``len(utf8)``,
            or a key is not UTF-8.
    """
    offsets = np.asarray(offsets)
    utf8 = np.asarray(utf8)
    if (
        offsets.ndim != 1
        or offsets.dtype.kind not in "iu"
        or utf8.ndim != 1
        or utf8.dtype != np.uint8
        or offsets.shape[0] == 0
        or offsets[0] != 0
        or offsets[-1] != utf8.shape[0]
        or np.any(np.diff(offsets) < 0)
    ):
        raise ValueError(
            "keys_offsets should be non-decreasing int64 offsets from 0 to the length of "
            "keys_utf8 (uint8)"
        )
    data = utf8.tobytes()
    bounds = offsets.tolist()
    try:
        values = [data[a:b].decode("utf-8", "surrogatepass") for a, b in itertools.pairwise(bounds)]
    except UnicodeDecodeError as err:
        raise ValueError(f"keys_utf8 holds a key that is not UTF-8 ({err})") from None
    strings = np.empty(len(values), dtype=object)
    strings[:] = values
    return strings


def check_distinct(keys: np.ndarray, hashes: np.ndarray, order: np.ndarray, name: str) -> None:
    """Raise if two entries of ``keys`` share a hash: the same key twice, or a collision."""
    ordered = hashes[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    if same.size == 0:
        return
    a, b = key_at(keys, int(order[same[0]])), key_at(keys, int(order[same[0] + 1]))
    if a == b:
        raise ValueError(
            f"{name} should be distinct, but key {a!r} appears more than once "
            f"({same.size} repeats in all)"
        )
    raise ValueError(
        f"{name} {a!r} and {b!r} have the same 64-bit hash (a collision, probability about "
        f"n**2 / 2**65 for n keys); rename one of them"
    )


def keyed_fingerprint(keys: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Fingerprint of a keyed dataset: its size, its key kind and a SHA-256 of its
    ``(key hash, label)`` pairs sorted by key hash, so the same examples in any order match.

    Raises:
        ValueError: if two keys are equal or share a hash.

    Example:
        >>> import numpy as np
        >>> a = keyed_fingerprint(np.array(["x", "y"]), np.array([0, 1]))
        >>> b = keyed_fingerprint(np.array(["y", "x"]), np.array([1, 0]))
        >>> a == b, a["num_examples"], a["key_kind"]
        (True, 2, 'str')
    """
    hashes = hash_keys(keys)
    order = np.argsort(hashes, kind="stable")
    check_distinct(keys, hashes, order, "keys")
    payload = np.ascontiguousarray(hashes[order], dtype="<u8").tobytes()
    payload += np.ascontiguousarray(np.asarray(targets)[order], dtype="<i8").tobytes()
    return {
        "num_examples": int(keys.shape[0]),
        "key_kind": "str" if is_string_keys(keys) else "int",
        "keys_sha256": hashlib.sha256(payload).hexdigest(),
    }


def _capacity(count: int) -> int:
    """The smallest power of two, at least 8, that keeps ``count`` entries at most half full."""
    return max(8, 1 << (2 * count - 1).bit_length()) if count else 8


class KeyTable:
    """A set of nonzero 64-bit key hashes: open addressing, linear probing, at most half full.

    Bulk insertion is vectorized (`add`); one lookup (`slot`) is a few probes on a
    `memoryview`, so O(1) and well under a microsecond. Each entry takes 8 bytes, the table
    2 to 4 times as many slots as entries: 16 to 32 bytes per key.

    Example:
        >>> import numpy as np
        >>> table = KeyTable()
        >>> table.add(np.array([5, 9, 5], dtype=np.uint64)).tolist()  # the second 5 repeats
        [False, False, True]
        >>> len(table), table.slot(9) >= 0, table.slot(4)
        (2, True, -1)
    """

    def __init__(self, expected: int = 0) -> None:
        self._table = np.zeros(_capacity(expected), dtype=np.uint64)
        self._count = 0
        self._view = self._table.data

    def __len__(self) -> int:
        return self._count

    @property
    def capacity(self) -> int:
        """Number of slots (a power of two)."""
        return int(self._table.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the table."""
        return int(self._table.nbytes)

    def slot(self, h: int) -> int:
        """The slot holding hash ``h``, or -1 if it is not in the table."""
        view, mask = self._view, self.capacity - 1
        i = h & mask
        while True:
            v = view[i]
            if v == h:
                return i
            if v == 0:
                return -1
            i = (i + 1) & mask

    def add(self, hashes: np.ndarray) -> np.ndarray:
        """Insert ``hashes`` (nonzero uint64); return ``(n,)`` bool, True for each hash that
        was already in the table or repeats an earlier entry of ``hashes``."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        if hashes.shape[0] > _CHUNK:  # bounded temporaries: ~40 bytes per hash of a chunk
            return np.concatenate(
                [self.add(hashes[i : i + _CHUNK]) for i in range(0, hashes.shape[0], _CHUNK)]
            )
        unique, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        repeated = np.ones(hashes.shape[0], dtype=bool)
        repeated[first] = False
        if self._count + unique.shape[0] > self.capacity // 2:
            self._grow(max(self._count + unique.shape[0], 2 * self._count))
        return repeated | self._insert(unique)[inverse]

    def _grow(self, count: int) -> None:
        old = self._table[self._table != 0]
        self._table = np.zeros(_capacity(count), dtype=np.uint64)
        self._view = self._table.data
        self._count = 0
        self._insert(old)

    def _insert(self, unique: np.ndarray) -> np.ndarray:
        """Insert distinct hashes, all of them rounds of probes at once; return which were
        present already."""
        table, mask = self._table, np.uint64(self.capacity - 1)
        present = np.zeros(unique.shape[0], dtype=bool)
        slot = (unique & mask).astype(np.int64)
        todo = np.arange(unique.shape[0])
        while todo.size:
            at, value = slot[todo], unique[todo]
            current = table[at]
            hit, empty = current == value, current == 0
            present[todo[hit]] = True
            contenders = np.flatnonzero(empty)
            _, first = np.unique(at[contenders], return_index=True)
            winners = contenders[first]  # one new entry per empty slot this round
            table[at[winners]] = value[winners]
            self._count += winners.shape[0]
            placed = np.zeros(todo.shape[0], dtype=bool)
            placed[winners] = True
            moved = ~hit & ~empty  # a slot taken by another hash: probe the next one
            slot[todo[moved]] = (at[moved] + 1) & int(mask)
            todo = todo[~hit & ~placed]  # losers of a contest see the winner next round
        return present

    def __getstate__(self) -> dict[str, Any]:
        return {"table": self._table, "count": self._count}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._table, self._count = state["table"], state["count"]
        self._view = self._table.data
