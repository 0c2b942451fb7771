from __future__ import annotations

from ftharness.untrusted import shown


def test_plain_text_is_shown_as_it_is():
    assert shown("vm-7.example.com pid 12") == "vm-7.example.com pid 12"
    assert shown("héllo wörld") == "héllo wörld"


def test_escape_sequences_newlines_and_bidi_overrides_are_escaped():
    text = shown("evil\x1b[2J\r\nFAKE\u202eLINE\x00\x7f\U000e0041")
    assert text == "evil\\x1b[2J\\x0d\\x0aFAKE\\u202eLINE\\x00\\x7f\\U000e0041"
    assert text.isprintable()


def test_a_backslash_is_doubled_so_every_escape_is_ours():
    assert shown("a\\x1b") == "a\\\\x1b"


def test_long_text_is_cut_and_says_how_much_is_left_off():
    assert shown("x" * 250) == "x" * 200 + "... (50 more characters)"
    assert shown("y" * 10, limit=4) == "yyyy... (6 more characters)"


def test_anything_is_shown_through_its_str():
    assert shown(12) == "12"
