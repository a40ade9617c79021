"""The one exception type users see. The CLI prints its message as a single line."""


class SlowfastError(Exception):
    """A user-facing failure: bad input, bad weights, bad video. The CLI exits with code 1."""


class ConfigError(SlowfastError):
    """A bad setting (unknown key, bad value, impossible combination). The CLI exits with code 2."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's message (or its type name), cut to ``limit`` characters."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."
