"""Keep secrets out of what we print: URLs with credentials, error texts.

The bottom layer: it imports nothing from ftharness, so `checkpoint/` and
every layer above can use it. fsspec turns `ftp://user:PASSWORD@host/...`
into storage options, and its errors may quote the URL back; everything
shown to a person or a log goes through one of these two functions.
"""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://user:***@host ; scheme://token@host -> scheme://***@host
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
# Error texts are cut: a driver's error may carry a whole request or response.
ERROR_TEXT_LIMIT = 200


def _mask(match: re.Match) -> str:
    user, separator, _secret = match.group("userinfo").partition(":")
    return f"{match.group('scheme')}{user}:***@" if separator else f"{match.group('scheme')}***@"


def redact_url(text: str) -> str:
    """`text` with the password (or token) of every URL in it replaced by ***."""
    return _CREDENTIALS.sub(_mask, text)


def describe_error(error: BaseException) -> str:
    """`Type: message`, credentials masked, cut to ERROR_TEXT_LIMIT characters."""
    return f"{type(error).__name__}: {redact_url(str(error))[:ERROR_TEXT_LIMIT]}"
