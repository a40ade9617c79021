"""``--max-failures N|FRACTION``: how many failed videos a run may have and still exit 0 (still listing them).

A large run always meets some broken files; without it any failure exits 1. ``N`` is a count (``--max-failures
10``), a fraction of the run's videos (skipped ones included) is written with a point or a percent sign
(``0.001``, ``0.1%``). Failures within it are still listed, recorded in the manifest and ``report.json``, and
named in a warning; an interrupted or stopped run exits as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class MaxFailures:
    text: str  # as given, for messages and report.json
    count: int | None = None
    fraction: float | None = None

    def allowed(self, total: int) -> int:
        """Failures allowed in a run of ``total`` videos."""
        return self.count if self.count is not None else math.floor((self.fraction or 0.0) * total + 1e-9)


def parse_max_failures(text: str | None) -> MaxFailures | None:
    """``"10"`` -> 10 videos; ``"0.01"`` or ``"1%"`` -> that fraction of the run's videos; None -> none allowed.

    Raises:
        ConfigError: not a count >= 0 nor a fraction in [0, 1].
    """
    if text is None:
        return None
    t = text.strip()
    bad = ConfigError(f"--max-failures {text!r}: expected a count (10) or a fraction of the videos (0.01 or 1%)")
    try:
        if t.endswith("%"):
            fraction = float(t[:-1]) / 100
        elif t.isdigit():
            return MaxFailures(text, count=int(t))
        else:
            fraction = float(t)
    except ValueError:
        raise bad from None
    if not (math.isfinite(fraction) and 0 <= fraction <= 1):
        raise bad
    return MaxFailures(text, fraction=fraction)
