from __future__ import annotations

import pytest

from ftharness.strict_json import MAX_DEPTH, StrictJsonError, loads


def test_what_ftharness_writes_parses():
    assert loads('{"a": [1, 2.5, "x", null, true], "b": {"c": -3}}', 1000) == {
        "a": [1, 2.5, "x", None, True],
        "b": {"c": -3},
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1e400", "out of range"),
        ('{"a": -1e400}', "out of range"),
        ("NaN", "not a number"),
        ("[Infinity]", "not a number"),
        ('{"a": 1, "a": 2}', "key 'a' appears twice"),
        ("1" * 41, "out of range"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper"),
        ("[" * 1_000_000, "nested deeper"),
        ("", "no content"),
        (b"\xff\xfe", "not UTF-8"),
        ("{", "not JSON"),
    ],
)
def test_what_no_ftharness_writer_produces_is_refused(text, reason):
    with pytest.raises(StrictJsonError, match=reason):
        loads(text, 10_000_000)


def test_text_over_the_size_bound_is_refused_before_parsing():
    with pytest.raises(StrictJsonError, match="more than the 10 allowed"):
        loads("[" + "1," * 10 + "1]", 10)


def test_nesting_at_the_bound_parses():
    depth = MAX_DEPTH
    assert loads("[" * depth + "]" * depth, 1000) is not None


def test_a_numpy_generator_state_parses():
    # PCG64 keeps 128-bit integers in its state: ftharness writes them (rng.py).
    import json

    import numpy as np

    state = np.random.default_rng(7).bit_generator.state
    assert state["state"]["state"] >= 2**100  # the case this test is about
    assert loads(json.dumps(state), 10_000) == state
    assert loads(str(-(2**128)), 100) == -(2**128)
