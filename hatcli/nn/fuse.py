"""Helpers for a model's ``fuse_model()``."""

from __future__ import annotations

from torch import nn


def fuse_children(module: nn.Module) -> None:
    """Call ``fuse_model()`` on every descendant that has one, walking into containers
    (``nn.Sequential``, ...) that have none; a module that has one fuses its own parts.

    HAT calls only the outermost module's ``fuse_model()``; most models implement it as
    ``fuse_children(self)``.
    """
    for child in module.children():
        if hasattr(child, "fuse_model"):
            child.fuse_model()  # type: ignore[operator]  # torch: __getattr__ is Tensor|Module
        else:
            fuse_children(child)
