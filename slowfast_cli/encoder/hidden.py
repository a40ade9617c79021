"""Importing a library without the parts of its dependencies it does not need: ``without``, ``shallow``, ``later``.

``towers`` imports open_clip, which imports three heavy libraries that building a vision tower does not need:
transformers (for Hugging Face *text* towers), timm (for timm towers: SigLIP, EVA) and torchvision's package
``__init__``, which imports all of torchvision, and with ``torchvision.ops.roi_align`` all of ``torch._dynamo``, for
one class (``torchvision.ops.misc.FrozenBatchNorm2d``) and the transforms of ``open_clip.transform``. Together they
are most of the start of ``encode`` and ``batch`` (BENCHMARKS.md §25). The three tools, used together in ``towers``:

- ``without(*names)``: inside the block ``import name`` fails as if it were not installed (open_clip's
  ``try: import timm ... except ImportError`` then binds ``timm = None``);
- ``shallow(*packages)``: inside the block the packages' ``__init__`` does not run; their submodules import as
  usual from the package's folder (the real ``torchvision.ops.misc``, the real ``torchvision.transforms``);
- ``later(module, names)``: after the block, the names that a failed optional import left unset or ``None`` in
  ``module`` stand for the real objects, imported on their first use (``timm.create_model``, ``to_2tuple(...)``).

Guarantees, each tested in ``tests/test_imports.py``: a library already imported is never hidden or shallowed; once
the block ends nothing is hidden: ``import torchvision`` runs the real package ``__init__`` (the submodules imported
inside the block are reused, one copy of each class, and bound on their package as usual), ``import timm`` gets the
real timm, and open_clip's timm and Hugging Face towers build as if nothing had been hidden. The block changes the
process-wide import state while it lasts, so it belongs to one thread's start-up, not to code running beside it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import sys
import types
from collections.abc import Iterator


class _Hidden(importlib.abc.MetaPathFinder):
    """Makes ``import NAME`` and its submodules raise ModuleNotFoundError while it is on ``sys.meta_path``."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"{fullname} is hidden while open_clip is imported", name=fullname)
        return None


def _imported(name: str) -> bool:
    return name in sys.modules or any(m.startswith(name + ".") for m in list(sys.modules))


@contextlib.contextmanager
def without(*names: str) -> Iterator[None]:
    """Inside the block, ``import name`` fails as if it were not installed, unless it is already imported."""
    finder = _Hidden(tuple(n for n in names if not _imported(n)))
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


class _Shell(types.ModuleType):
    """A package whose ``__init__`` has not run. Its submodules import from its ``__path__``; an attribute it lacks
    runs the real ``__init__`` first (in place while the block lasts; after it, through a plain import)."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if sys.modules.get(self.__name__) is self:
            self.__class__ = types.ModuleType
            self.__spec__.loader.exec_module(self)
            return getattr(self, name)
        return getattr(importlib.import_module(self.__name__), name)


def _bind_submodules(package: types.ModuleType) -> None:
    """Set ``package.child`` for every submodule ``package.child`` already in ``sys.modules`` (as importing sets)."""
    prefix = package.__name__ + "."
    for name, module in list(sys.modules.items()):
        child = name.removeprefix(prefix)
        if name.startswith(prefix) and "." not in child and child not in vars(package):
            setattr(package, child, module)


class _Binding(importlib.abc.Loader):
    """The real loader of a package that was shallow in a block; after its ``__init__``, binds its submodules."""

    def __init__(self, loader, finder: _Rebinder):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # the module looks imported the plain way
        self.loader.exec_module(module)
        for name in sorted(self.finder.dropped):  # a shallow subpackage whose submodules stayed imported: import it
            if name.rpartition(".")[0] == module.__name__ and name not in sys.modules:
                importlib.import_module(name)
        _bind_submodules(module)
        if not self.finder.names and self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _Rebinder(importlib.abc.MetaPathFinder):
    """Finds the real spec of a package that was shallow and gives it a ``_Binding`` loader (once per package)."""

    def __init__(self, names: set[str]):
        self.names, self.dropped = names, frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        self.names.discard(fullname)
        for finder in [f for f in sys.meta_path if f is not self]:
            spec = getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Binding(spec.loader, self)
                return spec
        return None


@contextlib.contextmanager
def shallow(*packages: str) -> Iterator[None]:
    """Inside the block, the packages (parents before children) are imported without running their ``__init__``.

    A package already imported, or with a submodule imported, is left as it is. After the block, a package whose
    ``__init__`` did not run is dropped from ``sys.modules``; the next ``import`` of it runs the real one.
    """
    shells: list[_Shell] = []
    for name in packages:
        parent, _, child = name.rpartition(".")
        if _imported(name) or (parent and not any(s.__name__ == parent for s in shells)):
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            continue
        module = importlib.util.module_from_spec(spec)
        module.__class__ = _Shell
        sys.modules[name] = module
        if parent:
            setattr(sys.modules[parent], child, module)
        shells.append(module)
    try:
        yield
    finally:
        dropped = {s.__name__ for s in shells if type(s) is _Shell and sys.modules.get(s.__name__) is s}
        for name in dropped:
            del sys.modules[name]
        if dropped:
            sys.meta_path.insert(0, _Rebinder(dropped))


class _Later:
    """Stands, in a module's namespace, for an object that module failed to import; the first use imports it."""

    def __init__(self, module: types.ModuleType, names: dict[str, tuple[str, str | None]], name: str):
        self._module, self._names, self._name = module, names, name

    def _real(self):
        found = {}
        for name, (source, attr) in self._names.items():
            imported = importlib.import_module(source)
            found[name] = imported if attr is None else getattr(imported, attr)
        vars(self._module).update(found)
        return found[self._name]

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return getattr(self._real(), attr)

    def __call__(self, *args, **kwargs):
        return self._real()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self._name}, imported on first use>"


def later(module: types.ModuleType, names: dict[str, tuple[str, str | None]]) -> bool:
    """Make ``module``'s names (``name -> (module to import, attribute or None for the module)``) import on use.

    Applied only where the optional import failed (the first name is None or unset) and the library is installed;
    returns whether it was applied. The first use of any of them binds all of them to the real objects.
    """
    first, (source, _) = next(iter(names.items()))
    if getattr(module, first, None) is not None or importlib.util.find_spec(source.partition(".")[0]) is None:
        return False
    for name in names:
        setattr(module, name, _Later(module, names, name))
    return True
