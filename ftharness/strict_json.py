"""Parsing untrusted JSON (manifests, event records) without surprises.

`json.loads` as such accepts what no ftharness writer produces and what the
code after it does not expect: `NaN` and `Infinity`, numbers like `1e400`
(read as infinity, an OverflowError at the first `int()`), the same key
twice (the last one silently wins: two readers may disagree), and nesting
deep enough to exhaust the interpreter's stack (RecursionError). `loads()`
refuses all of these with a `StrictJsonError` (a ValueError) naming why.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32  # ftharness writes at most 4 levels; 32 leaves room for growth


class StrictJsonError(ValueError):
    """The text is not JSON that ftharness could have written."""


def loads(text: str | bytes, max_bytes: int) -> Any:
    """Parse `text`, refusing non-finite numbers, duplicate keys, deep nesting, size."""
    if len(text) > max_bytes:
        raise StrictJsonError(f"{len(text)} bytes, more than the {max_bytes} allowed")
    if isinstance(text, bytes):
        # Not json's own detection, which would take a BOM for UTF-16 or -32.
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise StrictJsonError(f"not UTF-8 text ({error.reason})") from None
    if not text.strip():
        raise StrictJsonError("no content")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except RecursionError:
        raise StrictJsonError(f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as error:
        raise StrictJsonError(f"not JSON ({error.msg} at line {error.lineno})") from None
    _check_depth(value)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise StrictJsonError(f"key {twice!r} appears twice")
    return record


def _refuse_constant(name: str) -> float:
    raise StrictJsonError(f"{name} is not a number ftharness writes")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJsonError(f"{text[:40]} is out of range")
    return value


# The longest integers ftharness writes are NumPy's PCG64 generator states,
# 128 bits (39 digits); longer ones are never ftharness's (and Python refuses
# to convert over 4300 digits with a bare ValueError).
MAX_INT_DIGITS = 40


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise StrictJsonError(f"integer of {len(text)} digits is out of range")
    return int(text)


def _check_depth(value: Any) -> None:
    # Iterative: a recursive walk would hit the very limit it is checking.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise StrictJsonError(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
