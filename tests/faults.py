"""A real Ctrl-C at an exact moment: inside torch.save, while it writes (see the tests of faults while writing)."""

import os
import signal

import torch


class _InterruptingFile:
    """A file whose ``at_write``-th write() gets a real SIGINT delivered first, as Ctrl-C mid-save would."""

    def __init__(self, f, at_write: int):
        self._f, self._at, self._writes = f, at_write, 0

    def write(self, data):
        self._writes += 1
        if self._writes == self._at:
            os.kill(os.getpid(), signal.SIGINT)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def ctrl_c_inside_torch_save(monkeypatch, on_save: int = 1, at_write: int = 2) -> None:
    """Make torch's own torch.save write its ``on_save``-th file (counting from 1) through a file that receives a
    real SIGINT at its ``at_write``-th write; other saves are untouched. Nothing of slowfast's is replaced."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        return real_save(obj, _InterruptingFile(f, at_write) if len(calls) == on_save else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
