"""The lighter start (``encoder/hidden.py``): open_clip is imported without what building a vision tower does not
need, and nothing stays hidden afterwards. The tokens are unchanged: every encoder test builds its towers through
the same imports; here the import machinery itself is pinned, on small packages made for the test and, in fresh
interpreters, on the real open_clip, torchvision, timm and transformers."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slowfast_cli.encoder.hidden import later, shallow, without

ROOT = Path(__file__).resolve().parent.parent


def fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter with this checkout first on the path; its stdout."""
    r = subprocess.run([sys.executable, "-P", "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.fixture
def pkg(tmp_path, request):
    """A package ``name`` with a subpackage ``sub`` and a module ``sub.leaf``; each ``__init__`` records its run
    in ``name.RUNS`` (a list in the leaf's sibling module ``runs``, which is not a package)."""
    name = f"sfpkg{abs(hash(request.node.name))}"
    root = tmp_path / name
    (root / "sub").mkdir(parents=True)
    (tmp_path / f"{name}_runs.py").write_text("RUNS = []\n")
    (root / "__init__.py").write_text(f"import {name}_runs\n{name}_runs.RUNS.append('pkg')\nVALUE = 1\n")
    (root / "sub" / "__init__.py").write_text(f"import {name}_runs\n{name}_runs.RUNS.append('sub')\n")
    (root / "sub" / "leaf.py").write_text("class Leaf:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    yield name
    sys.path.remove(str(tmp_path))
    for m in [m for m in sys.modules if m == name or m.startswith((name + ".", name + "_"))]:
        del sys.modules[m]


def runs(name: str) -> list[str]:
    return importlib.import_module(f"{name}_runs").RUNS


class TestShallow:
    def test_submodules_import_without_the_package_init_and_the_package_is_real_afterwards(self, pkg):
        finders = list(sys.meta_path)
        with shallow(pkg, f"{pkg}.sub"):
            leaf = __import__(f"{pkg}.sub.leaf", fromlist=["Leaf"])
            assert runs(pkg) == []  # neither __init__ ran
        assert pkg not in sys.modules and f"{pkg}.sub" not in sys.modules  # nothing shallow is left
        module = __import__(f"{pkg}.sub.leaf")  # `import pkg.sub.leaf`: the real package, its __init__ run now
        assert runs(pkg) == ["pkg", "sub"] and module.VALUE == 1
        assert module.sub.leaf is leaf and sys.modules[f"{pkg}.sub.leaf"] is leaf  # one copy, bound as usual
        assert sys.meta_path == finders  # the rebinding finder is gone once both packages are real

    def test_an_attribute_the_shell_lacks_runs_the_real_init_in_place(self, pkg):
        with shallow(pkg):
            shell = __import__(pkg)
            assert runs(pkg) == []
            assert shell.VALUE == 1 and runs(pkg) == ["pkg"]
        assert sys.modules[pkg] is shell  # made real inside the block, so kept

    def test_after_the_block_a_kept_reference_reaches_the_real_package(self, pkg):
        with shallow(pkg):
            shell = __import__(pkg)
        assert shell.VALUE == 1 and runs(pkg) == ["pkg"] and sys.modules[pkg] is not shell

    def test_an_imported_package_is_left_alone(self, pkg):
        real = __import__(pkg)
        with shallow(pkg, f"{pkg}.sub"):
            __import__(f"{pkg}.sub.leaf")
        assert sys.modules[pkg] is real and runs(pkg) == ["pkg", "sub"]

    def test_an_error_inside_the_block_still_restores(self, pkg):
        with pytest.raises(RuntimeError), shallow(pkg):
            __import__(f"{pkg}.sub")
            raise RuntimeError
        assert pkg not in sys.modules
        assert __import__(pkg).VALUE == 1


class TestWithout:
    def test_hidden_inside_the_block_only(self, pkg):
        with without(pkg), pytest.raises(ModuleNotFoundError):
            __import__(f"{pkg}.sub")
        assert __import__(f"{pkg}.sub").sub is sys.modules[f"{pkg}.sub"]

    def test_an_imported_module_is_never_hidden(self, pkg):
        real = __import__(pkg)
        with without(pkg):
            assert __import__(pkg) is real


def test_later_binds_the_real_objects_on_first_use(pkg):
    namespace = type(sys)("sfpkg_user")
    namespace.json = None  # as `try: import json ... except ImportError: json = None` leaves it
    assert later(namespace, {"json": ("json", None), "dumps": ("json", "dumps")})
    assert namespace.json is not None  # open_clip's `if timm is None` check passes
    assert namespace.dumps([1]) == "[1]"
    import json

    assert namespace.json is json and namespace.dumps is json.dumps
    assert not later(namespace, {"json": ("json", None)})  # only where the import failed
    namespace.x = None
    assert not later(namespace, {"x": ("sfpkg_not_installed_anywhere", None)})  # nor where it is not installed


def test_towers_import_only_what_a_vision_tower_needs():
    out = fresh("""
        import sys
        import slowfast_cli.encoder.towers
        print(sorted(m for m in ("open_clip", "open_clip.factory", "open_clip.tokenizer", "torchvision",
                                  "torchvision.ops", "torch._dynamo", "timm", "transformers") if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_after_towers_every_library_imports_and_works_as_usual():
    """torchvision, open_clip, timm towers and transformers, imported after ``towers`` in the same process."""
    fresh("""
        import sys
        from slowfast_cli.encoder import towers
        import open_clip, torch, torchvision
        import torchvision.ops.misc
        assert torchvision.__version__ and torchvision.ops.misc.FrozenBatchNorm2d is open_clip.utils.FrozenBatchNorm2d
        assert torchvision.ops.nms(torch.tensor([[0., 0, 1, 1]]), torch.tensor([1.]), 0.5).tolist() == [0]
        assert torchvision.transforms.InterpolationMode is open_clip.transform.InterpolationMode
        assert open_clip.model is sys.modules["open_clip.model"] and open_clip.timm_model.TimmModel is towers.TimmModel
        assert "slowfast-tiny-vit" not in open_clip.list_models()
        towers.register_own_models()
        assert "slowfast-tiny-vit" in open_clip.list_models()
        assert open_clip.get_model_config("ViT-B-32") == towers.model_config("ViT-B-32")
        assert open_clip.get_model_config("slowfast-tiny-vit") == towers.model_config("slowfast-tiny-vit")
        open_clip.image_transform(224, is_train=False)
        tower = open_clip.timm_model.TimmModel("vit_tiny_patch16_224", embed_dim=8, image_size=32)
        import timm, timm.layers
        assert open_clip.timm_model.timm is timm and open_clip.timm_model.to_2tuple is timm.layers.to_2tuple
        assert tower.trunk.__class__.__module__.startswith("timm.")
        import transformers
        assert open_clip.hf_model.transformers.AutoConfig is transformers.AutoConfig  # the first use binds them all
        hf = open_clip.hf_model
        assert hf.AutoConfig is transformers.AutoConfig and hf.transformers is transformers
        assert not [f for f in sys.meta_path if type(f).__module__.startswith("slowfast_cli")], sys.meta_path
    """)


def test_libraries_imported_before_towers_are_used_as_they_are():
    fresh("""
        import sys
        import timm, torchvision
        before = torchvision
        from slowfast_cli.encoder import towers
        import open_clip
        assert sys.modules["torchvision"] is before and open_clip.timm_model.timm is timm
        assert "open_clip.factory" not in sys.modules or open_clip.list_models()
    """)


def test_towers_and_none_weights_never_import_huggingface_hub():
    """huggingface_hub is for tags only (``encoder/weights.py``); after the towers, open_clip's download works as if
    it had been imported with them."""
    out = fresh("""
        import sys
        import torch
        from slowfast_cli.config import EncoderCfg
        from slowfast_cli.encoder.encoder import build_encoder
        build_encoder(EncoderCfg(model="slowfast-tiny-vit", pretrained="none"), torch.device("cpu"), torch.float32)
        print("huggingface_hub" in sys.modules)
        import open_clip.pretrained as pretrained
        assert pretrained.has_hf_hub(True) and "first use" in repr(pretrained.hf_hub_download)
        getattr(pretrained.hf_hub_download, "func", None)  # any use binds the real function
        import huggingface_hub
        print(pretrained.hf_hub_download is huggingface_hub.hf_hub_download)
    """)
    assert out.split() == ["False", "True"]


class TestProcess:
    """``cli/process.py``: what the ``slowfast`` process sets for itself (BENCHMARKS.md §28)."""

    RUN = """
        import gc, os, sys
        sys.argv = ["slowfast", *{argv!r}]
        from slowfast_cli.cli.app import main
        assert "torch" not in sys.modules  # the command line loads before torch: OMP_WAIT_POLICY is set in time
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        print(os.environ.get("OMP_WAIT_POLICY"), gc.get_freeze_count() > 0, gc.get_threshold() == {threshold!r})
    """

    def test_passive_omp_threads_and_a_frozen_heap_at_the_end(self):
        from slowfast_cli.cli.process import START_THRESHOLD

        out = fresh(self.RUN.format(argv=["budget", "--json"], threshold=START_THRESHOLD))
        assert out.split()[-3:] == ["PASSIVE", "True", "True"]

    def test_the_users_wait_policy_is_kept(self, monkeypatch):
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        out = fresh(self.RUN.format(argv=["configs"], threshold=(0, 0, 0)))
        assert out.split()[-3:] == ["ACTIVE", "True", "False"]

    def test_batch_restores_the_thresholds_once_the_model_is_loaded(self, tmp_path, small_video):
        import gc
        import shutil

        (tmp_path / "in").mkdir()
        shutil.copy(small_video, tmp_path / "in")
        argv = ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--config", "tiny", "--workers", "1"]
        out = fresh(self.RUN.format(argv=argv, threshold=gc.get_threshold()))
        assert out.split()[-3:] == ["PASSIVE", "True", "True"]
