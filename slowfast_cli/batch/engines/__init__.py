"""The engines of ``slowfast batch``, by name. Each implements ``run.Engine``; adding one is a module here and a
line in ``ENGINES``. Engine modules are imported only when chosen, so ``--help`` never imports Ray."""

from __future__ import annotations

import importlib

from ...errors import ConfigError
from ..run import Engine, EngineOptions

# name -> (module, class, what it needs beyond the base install: the extra of the same name)
ENGINES = {
    "local": (f"{__name__}.local", "LocalEngine", None),
    "ray": (f"{__name__}.ray", "RayEngine", "Ray Data"),
}


def make_engine(name: str, options: EngineOptions) -> Engine:
    """The engine called ``name`` with ``options`` (not yet started).

    Raises:
        ConfigError: an unknown name, options the engine does not take, or an engine whose extra is not installed.
    """
    if name not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {name!r}")
    module, cls, needs = ENGINES[name]
    try:
        engine_class = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise ConfigError(
            f"--engine {name} needs {needs}, which is not installed ({exc}); install the {name} extra: "
            f"pip install 'slowfast-cli[{name}]' (or pip install -e '.[{name}]' in a checkout)"
        ) from None
    return engine_class(options)
