"""Showing untrusted text: what a checkpoint or record says, printed safely.

A manifest's `writer.host`, a record's run id, an error's text: anyone who
can write to the bucket chooses these. Printed raw, an escape sequence
rewrites the terminal (hides lines, fakes a prompt) and a newline forges a
line of output. `shown()` is the one function that turns such a string into
something safe to print: one line, printable characters only, bounded.
"""

from __future__ import annotations

import unicodedata

MAX_SHOWN = 200  # characters kept of one untrusted string; the rest is summarised

# Printable but misleading: they reorder or hide the text around them.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Zl", "Zp"})


def shown(text: object, limit: int = MAX_SHOWN) -> str:
    """`text` with every control, format and non-printable character escaped.

    Backslashes are doubled, so an escape in the output is always ours:
    `shown("a\\x1b[2Jb")` is `'a\\\\x1b[2Jb'`, printed as `a\\x1b[2Jb`.
    Longer than `limit` characters, it is cut and says how much was left off.
    """
    text = str(text)
    cut = len(text) - limit if len(text) > limit else 0
    parts = []
    for char in text[:limit] if cut else text:
        if char == "\\":
            parts.append("\\\\")
        elif char == " " or (
            char.isprintable() and unicodedata.category(char) not in _INVISIBLE_CATEGORIES
        ):
            parts.append(char)
        else:
            parts.append(_escape(char))
    if cut:
        parts.append(f"... ({cut} more characters)")
    return "".join(parts)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
