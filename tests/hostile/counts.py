"""Cases tried per family of the hostile-checkpoint suite, printed at the end."""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[str] = Counter()
