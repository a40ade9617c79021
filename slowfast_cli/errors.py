"""The one exception type users see. The CLI prints its message as a single line."""


class SlowfastError(Exception):
    """A user-facing failure: bad input, bad weights, bad video. The CLI exits with code 1."""


class ConfigError(SlowfastError):
    """A bad setting (unknown key, bad value, impossible combination). The CLI exits with code 2."""
