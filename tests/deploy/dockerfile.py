"""A minimal Dockerfile reader for tests: instructions of the final stage.

Enough for asserting structure (which instructions, in which order, with which
arguments); not a full parser: parser directives and escape characters other
than the default backslash are not supported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case, e.g. "RUN"
    arguments: str  # the rest, continuation lines joined
    line: int  # 1-based line where the instruction starts


def instructions(path: str | Path) -> list[Instruction]:
    """The instructions of the Dockerfile's final stage (the image that ships)."""
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        stripped = raw.strip()
        # Docker drops comment lines even in the middle of a continued instruction.
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1] if continued else stripped)
        if continued:
            continue
        keyword, _, arguments = " ".join(pending).partition(" ")
        pending = []
        if keyword.upper() == "FROM":
            result = []  # a new stage starts; only the last one is the image
        result.append(Instruction(keyword.upper(), arguments.strip(), start))
    return result


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON-array (exec form) arguments; shell form is an error here."""
    try:
        value = json.loads(instruction.arguments)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(
            f"line {instruction.line}: {instruction.keyword} is not in exec form "
            f"(a JSON array of strings): {instruction.arguments}"
        )
    return value


def entrypoint_and_cmd(path: str | Path) -> tuple[list[str], list[str]]:
    """ENTRYPOINT and CMD of the image, as the argv lists Docker would use.

    The last ENTRYPOINT and the last CMD of the final stage win, as in Docker.
    Both must be in exec form: a shell in between would be PID 1 instead of
    ftharness and would not forward SIGTERM.
    """
    found: dict[str, Instruction] = {}
    for instruction in instructions(path):
        if instruction.keyword in ("ENTRYPOINT", "CMD"):
            found[instruction.keyword] = instruction
    missing = {"ENTRYPOINT", "CMD"} - found.keys()
    if missing:
        raise ValueError(f"{path}: no {' or '.join(sorted(missing))}")
    return exec_form(found["ENTRYPOINT"]), exec_form(found["CMD"])
