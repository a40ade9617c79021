"""The ``slowfast`` command line, a thin typer layer: ``app`` (the app and ``main``), ``commands`` and ``batch``
(the commands), ``options`` (shared flags), ``tables`` (what is printed), ``output`` (consoles and errors).

Only this package imports typer and rich, prints, and decides exit codes.
"""
