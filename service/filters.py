"""Payload filters in Qdrant's idiom: parsing, the payload index's rows, and resolution to points.

A filter is `{must: [...], should: [...], must_not: [...]}`; each entry is a condition or a nested
filter (issue 15). Semantics as Qdrant's `check_filter` (lib/segment/src/payload_storage/query_checker.rs):
- `must`: every condition holds; `should`: at least one holds (so `should: []` matches nothing);
  `must_not`: none holds. A clause that is absent (or null) is no constraint; `{}` matches every point.
  A clause may also be one condition instead of a list.
- `{key, match: {value}}`: some value stored at `key` equals `value` (a string, integer or boolean; types
  are strict: 1 is not "1", not true and not 1.0). A stored array matches when one of its elements does.
- `{key, match: {any: [...]}}`: some stored value is one of the strings or integers given.
- `{key, range: {gt, gte, lt, lte}}`: some stored number (integer or float; not a boolean) lies in the
  range; bounds left out do not constrain.
- `{has_id: [...]}`: the point's id is one of these (ids typed as everywhere: 5 is not "5").
- `{is_empty: {key}}`: `key` is missing, null or [] (a `[null]` is not empty).
Keys are dotted paths into the payload; `name[]` steps into every element of an array (Qdrant's
`country.cities[].population`); a key does not step into an array without `[]`.

Matching rows are found in SQLite, never by reading payloads per query: every key a collection declares
(`payload_index`) has rows (cid, key, kind, value, iid) in `payload_values`, written in the transaction
that writes the point (service/store.py). `index_rows` says which rows a payload gives. A filter may
only name declared keys: any other key is a 422 that says how to declare it, because answering it would
need a scan of every payload (and a silent "no match" would look like an answer).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import InvalidInput

Ids = npt.NDArray[np.int64]
Scalar = str | int | bool

#: kinds of a payload_values row: boolean, integer, float, string, and "something else that makes the key
#: non-empty" (an object, a nested array, a null inside an array) which no match or range selects
BOOL, INT, FLOAT, STR, OTHER = "b", "i", "f", "s", "x"
#: most values one `match.any` or `has_id` may list
MAX_LIST = 100_000
#: deepest nesting of filters inside filters
MAX_DEPTH = 16
MAX_KEY_CHARS = 256
_I64 = (-(2**63), 2**63 - 1)
_CLAUSES = ("must", "should", "must_not")
_RANGE_OPS = ("gt", "gte", "lt", "lte")


# --- the parsed filter -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    key: str
    value: Scalar
    at: str = field(default="", compare=False)


@dataclass(frozen=True)
class MatchAny:
    key: str
    values: tuple[Scalar, ...]
    at: str = field(default="", compare=False)


@dataclass(frozen=True)
class Range:
    key: str
    gt: float | int | None = None
    gte: float | int | None = None
    lt: float | int | None = None
    lte: float | int | None = None
    at: str = field(default="", compare=False)


@dataclass(frozen=True)
class HasId:
    ids: tuple[Scalar, ...]
    at: str = field(default="", compare=False)


@dataclass(frozen=True)
class IsEmpty:
    key: str
    at: str = field(default="", compare=False)


@dataclass(frozen=True)
class Filter:
    """must / should / must_not; None is an absent clause (no constraint), () an empty one."""

    must: tuple[Condition, ...] | None = None
    should: tuple[Condition, ...] | None = None
    must_not: tuple[Condition, ...] | None = None
    at: str = field(default="filter", compare=False)


Condition = Match | MatchAny | Range | HasId | IsEmpty | Filter
Leaf = Match | MatchAny | Range | HasId | IsEmpty


# --- parsing ---------------------------------------------------------------------------------------


def _text(v: str) -> bool:
    """Whether SQLite can store `v`: JSON allows lone surrogates (\\ud800), UTF-8 does not."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_key(key: Any, where: str) -> str:
    """A payload key: dotted segments of letters, digits, '_', '-', ... each optionally ending in `[]`."""
    if not isinstance(key, str) or not key:
        raise InvalidInput(where, f"must be a non-empty string (a dotted payload path), got {key!r}"[:200])
    if len(key) > MAX_KEY_CHARS:
        raise InvalidInput(where, f"at most {MAX_KEY_CHARS} characters")
    if not _text(key):
        raise InvalidInput(where, "must be valid Unicode text (it holds a lone surrogate)")
    for seg in key.split("."):
        name = seg.removesuffix("[]")
        if not name or any(c in name for c in '[]"') or any(c.isspace() for c in name):
            raise InvalidInput(where, f"{key!r} is not a payload path: segments are separated by '.', each a "
                                      "non-empty name (no spaces, quotes or brackets) optionally followed by [] "
                                      "to step into an array, e.g. country.cities[].population")
    return key


def _number(v: Any, where: str) -> float | int:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidInput(where, f"a range bound must be a number, got {json.dumps(v)[:80]}")
    if isinstance(v, float) and not math.isfinite(v):
        raise InvalidInput(where, "a range bound must be finite")
    if isinstance(v, int) and not _I64[0] <= v <= _I64[1]:
        return float(v)  # SQLite compares it with the stored integers just as well
    return v


def _scalar(v: Any, where: str) -> Scalar:
    if isinstance(v, str) and not _text(v):
        raise InvalidInput(where, "must be valid Unicode text (it holds a lone surrogate)")
    if isinstance(v, bool | str):
        return v
    if isinstance(v, int):
        if not _I64[0] <= v <= _I64[1]:
            raise InvalidInput(where, "an integer to match must fit in 64 bits")
        return v
    hint = "; floats are matched with range, e.g. {\"range\": {\"gte\": 0.5, \"lte\": 0.5}}" \
        if isinstance(v, float) else ""
    raise InvalidInput(where, f"match.value must be a string, an integer or a boolean, got {json.dumps(v)[:80]}{hint}")


def _object(raw: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput(where, f"{what} must be a JSON object, got {json.dumps(raw)[:80]}")
    return raw


def _unknown(raw: dict[str, Any], known: tuple[str, ...], where: str, what: str) -> None:
    for k in raw:
        if k not in known:
            raise InvalidInput(f"{where}.{k}", f"unknown {what} {k!r}; known: {', '.join(known)}")


def parse(raw: Any, where: str = "filter", *, depth: int = 0) -> Filter:
    """The filter `raw` (JSON data), checked; InvalidInput names the path (`filter.must.0.range.gt`)."""
    body = _object(raw, where, "a filter")
    _unknown(body, _CLAUSES, where, "filter clause")
    if depth > MAX_DEPTH:
        raise InvalidInput(where, f"filters nest at most {MAX_DEPTH} deep")
    clauses: dict[str, tuple[Condition, ...] | None] = {}
    for name in _CLAUSES:
        value = body.get(name)
        if value is None:
            clauses[name] = None
            continue
        items = value if isinstance(value, list) else [value]  # Qdrant takes one condition or a list
        base = f"{where}.{name}"
        clauses[name] = tuple(_condition(c, f"{base}.{i}" if isinstance(value, list) else base, depth)
                              for i, c in enumerate(items))
    return Filter(clauses["must"], clauses["should"], clauses["must_not"], at=where)


def _condition(raw: Any, where: str, depth: int) -> Condition:
    body = _object(raw, where, "a condition")
    if not body or any(k in body for k in _CLAUSES):  # {} is an empty filter, as Qdrant reads it
        return parse(body, where, depth=depth + 1)
    if "has_id" in body:
        _unknown(body, ("has_id",), where, "field in a has_id condition")
        ids = body["has_id"]
        if not isinstance(ids, list):
            raise InvalidInput(f"{where}.has_id", "must be a list of point ids")
        if len(ids) > MAX_LIST:
            raise InvalidInput(f"{where}.has_id", f"at most {MAX_LIST:,} ids")
        for i, v in enumerate(ids):
            ok = (isinstance(v, str) and 1 <= len(v) <= 256) or (
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _I64[1])
            if not ok:
                raise InvalidInput(f"{where}.has_id.{i}", f"a point id is a string of 1-256 characters or a "
                                                          f"whole number in [0, 2^63 - 1], got {json.dumps(v)[:80]}")
        return HasId(tuple(ids), at=where)
    if "is_empty" in body:
        _unknown(body, ("is_empty",), where, "field in an is_empty condition")
        inner = _object(body["is_empty"], f"{where}.is_empty", "is_empty")
        _unknown(inner, ("key",), f"{where}.is_empty", "field")
        return IsEmpty(check_key(inner.get("key"), f"{where}.is_empty.key"), at=f"{where}.is_empty")
    if "key" not in body:
        raise InvalidInput(where, "a condition is {key, match} or {key, range}, {has_id: [...]}, "
                                  "{is_empty: {key}} or a nested filter {must, should, must_not}; "
                                  f"got the fields {sorted(body)}")
    _unknown(body, ("key", "match", "range"), where, "operator")
    key = check_key(body["key"], f"{where}.key")
    given = [op for op in ("match", "range") if body.get(op) is not None]
    if len(given) != 1:
        raise InvalidInput(where, f"give exactly one of match and range for key {key!r}")
    if given[0] == "range":
        rng = _object(body["range"], f"{where}.range", "range")
        _unknown(rng, _RANGE_OPS, f"{where}.range", "range operator")
        bounds = {op: None if rng.get(op) is None else _number(rng[op], f"{where}.range.{op}") for op in _RANGE_OPS}
        return Range(key, **bounds, at=where)
    match = _object(body["match"], f"{where}.match", "match")
    _unknown(match, ("value", "any"), f"{where}.match", "match operator")
    if ("value" in match) == ("any" in match):
        raise InvalidInput(f"{where}.match", "give exactly one of value and any")
    if "value" in match:
        return Match(key, _scalar(match["value"], f"{where}.match.value"), at=where)
    values = match["any"]
    if not isinstance(values, list):
        raise InvalidInput(f"{where}.match.any", "must be a list of strings or a list of integers")
    if len(values) > MAX_LIST:
        raise InvalidInput(f"{where}.match.any", f"at most {MAX_LIST:,} values")
    strings = all(isinstance(v, str) for v in values)
    if strings and not all(map(_text, values)):
        raise InvalidInput(f"{where}.match.any", "must be valid Unicode text (a value holds a lone surrogate)")
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if not (strings or ints):
        raise InvalidInput(f"{where}.match.any", "must be all strings or all integers (as Qdrant's match any)")
    for i, v in enumerate(values):
        if isinstance(v, int) and not _I64[0] <= v <= _I64[1]:
            raise InvalidInput(f"{where}.match.any.{i}", "an integer to match must fit in 64 bits")
    return MatchAny(key, tuple(values), at=where)


def leaves(f: Filter) -> Iterator[Leaf]:
    for clause in (f.must, f.should, f.must_not):
        for c in clause or ():
            if isinstance(c, Filter):
                yield from leaves(c)
            else:
                yield c


def check_declared(f: Filter, declared: tuple[str, ...], collection: str) -> None:
    """InvalidInput naming the first key the collection does not index, with how to declare it."""
    for leaf in leaves(f):
        if isinstance(leaf, HasId) or leaf.key in declared:
            continue
        where = f"{leaf.at}.key"
        raise InvalidInput(where, f"payload key {leaf.key!r} is not indexed in collection {collection!r} "
                                  f"(indexed: {list(declared)}); declare it first: PUT /v1/collections/{collection}"
                                  f"/payload_index with {{\"fields\": [{json.dumps(leaf.key)}]}}")


# --- the payload index's rows ----------------------------------------------------------------------


def path_values(payload: Any, key: str) -> list[Any]:
    """The values stored at `key` (Qdrant's get_value): intermediate arrays are entered only at `[]`,
    a leaf array is one value unless the key ends in `[]`."""
    current = [payload]
    for seg in key.split("."):
        name, each = (seg[:-2], True) if seg.endswith("[]") else (seg, False)
        nxt = []
        for v in current:
            if isinstance(v, dict) and name in v:
                got = v[name]
                if each:
                    if isinstance(got, list):
                        nxt.extend(got)
                else:
                    nxt.append(got)
        current = nxt
    return current


def _typed(v: Any) -> tuple[str, Any] | None:
    if isinstance(v, bool):
        return BOOL, int(v)
    if isinstance(v, int):
        # beyond int64 SQLite cannot hold it as an integer; Qdrant's match (as_i64) does not match it either
        return (INT, v) if _I64[0] <= v <= _I64[1] else (FLOAT, float(v))
    if isinstance(v, float):
        return (FLOAT, v) if math.isfinite(v) else (OTHER, 0)
    if isinstance(v, str):
        return (STR, v) if _text(v) else (OTHER, 0)  # a filter cannot name such a string anyway
    return None


def index_rows(payload: Any, keys: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    """(key, kind, value) rows of `payload` for each declared key: one per scalar value (an array's
    elements one level deep, as Qdrant matches them), and an OTHER row for anything else non-empty;
    a key with no rows is empty (missing, null or [])."""
    out: list[tuple[str, str, Any]] = []
    if not isinstance(payload, dict):
        return out
    for key in keys:
        for v in path_values(payload, key):
            if v is None or v == []:
                continue
            if isinstance(v, list):
                typed = [_typed(e) for e in v]
                out.extend((key, *t) for t in typed if t is not None)
                if any(t is None for t in typed):
                    out.append((key, OTHER, 0))
                continue
            t = _typed(v)
            out.append((key, *t) if t is not None else (key, OTHER, 0))
    return out


# --- resolution ------------------------------------------------------------------------------------


def leaf_sql(leaf: Leaf) -> tuple[str, list[Any]]:
    """SQL selecting the iids one leaf matches (parameters `cid` first), over payload_values/points."""
    if isinstance(leaf, HasId):
        return ("SELECT iid FROM points WHERE cid = ? AND ext IN (SELECT value FROM json_each(?))",
                [json.dumps(list(leaf.ids))])
    base = "SELECT iid FROM payload_values WHERE cid = ? AND key = ?"
    if isinstance(leaf, IsEmpty):  # the complement is taken by `resolve`
        return base, [leaf.key]
    if isinstance(leaf, Match):
        kind, value = _typed(leaf.value)  # type: ignore[misc]
        return f"{base} AND kind = ? AND value = ?", [leaf.key, kind, value]
    if isinstance(leaf, MatchAny):
        kind = STR if leaf.values and isinstance(leaf.values[0], str) else INT
        return f"{base} AND kind = ? AND value IN (SELECT value FROM json_each(?))", \
            [leaf.key, kind, json.dumps(list(leaf.values))]
    sql, args = f"{base} AND kind IN ('i', 'f')", [leaf.key]
    for op, sym in (("gt", ">"), ("gte", ">="), ("lt", "<"), ("lte", "<=")):
        bound = getattr(leaf, op)
        if bound is not None:
            sql += f" AND value {sym} ?"
            args.append(bound)
    return sql, args


def resolve(f: Filter, leaf: Callable[[Leaf], Ids], universe: Callable[[], Ids]) -> Ids:
    """The sorted unique iids `f` matches, from each leaf's iids (`leaf`, sorted unique) and all of
    the collection's iids (`universe`, asked for only when a clause needs the complement)."""
    everything: list[Ids] = []

    def all_ids() -> Ids:
        if not everything:
            everything.append(universe())
        return everything[0]

    def cond(c: Condition) -> Ids:
        if isinstance(c, Filter):
            return evaluate(c)
        got = leaf(c)
        return np.setdiff1d(all_ids(), got, assume_unique=True) if isinstance(c, IsEmpty) else got

    def evaluate(g: Filter) -> Ids:
        result: Ids | None = None
        for c in g.must or ():
            got = cond(c)
            result = got if result is None else np.intersect1d(result, got, assume_unique=True)
            if not result.size:
                return result
        if g.should is not None:
            union = np.unique(np.concatenate([cond(c) for c in g.should])) if g.should else np.empty(0, np.int64)
            result = union if result is None else np.intersect1d(result, union, assume_unique=True)
        if g.must_not:
            if result is None:
                result = all_ids()
            for c in g.must_not:
                if not result.size:
                    break
                result = np.setdiff1d(result, cond(c), assume_unique=True)
        return all_ids() if result is None else result

    return evaluate(f).astype(np.int64, copy=False)
