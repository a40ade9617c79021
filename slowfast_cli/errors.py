"""The one exception type users see. The CLI prints its message as a single line."""

import re


class SlowfastError(Exception):
    """A user-facing failure: bad input, bad weights, bad video. The CLI exits with code 1."""


class ConfigError(SlowfastError):
    """A bad setting (unknown key, bad value, impossible combination). The CLI exits with code 2."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's message (or its type name), cut to ``limit`` characters."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_failure(exc: BaseException, expected: str) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in words that never advise unsafe loading.

    PyTorch's own message for a file holding other Python objects suggests re-running with ``weights_only=False``
    (which would run code from the file); this says what the file holds and what was expected instead.

    Args:
        exc: the exception torch.load raised.
        expected: what the file should hold, e.g. "a dict with 'tokens' (a tensor) and 'meta' (plain values)".
    """
    text = str(exc)
    if "Weights only load failed" in text or "WeightsUnpickler error" in text:
        found = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", text)
        if found is None:  # an unknown pickle opcode ("Unsupported operand"): bytes, not objects
            return "damaged, or not a file torch.save wrote (its pickle holds bytes the safe unpickler does not know)"
        return (
            f"not a plain tensor file: it holds Python objects ({found[1]}) other than tensors and plain values, "
            f"which slowfast never loads; expected {expected}"
        )
    return f"cannot be loaded: {first_line(exc)}"
