"""The tool version, recorded in every token file (``meta["version"]``)."""

__version__ = "0.1.0"
