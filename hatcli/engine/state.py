"""What a checkpoint holds, and restoring a loop from one (the seed's three resume uses)."""

from __future__ import annotations

import platform
import random
import re
from collections import Counter
from typing import Any, cast

import numpy as np
import torch

from hatcli.engine.callback import Callback
from hatcli.engine.context import LoopContext
from hatcli.errors import CheckpointError

FORMAT_VERSION = 1


def _hat_version() -> str:
    from hatcli import __version__

    return __version__


def rng_state() -> dict[str, Any]:
    # The legacy tuple: get_state's default (legacy=True) returns it for MT19937.
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_rng_state(),
    }


def _python_rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))


def _keyed(callbacks: list[Callback]) -> list[tuple[str, Callback]]:
    """Each callback with the key of its saved state: its ``state_key`` (the class name
    by default), with ``#2``, ``#3`` for the second and third of one key. Adding or
    removing another callback in the spec leaves every key as it was."""
    seen: Counter[str] = Counter()
    keyed = []
    for callback in callbacks:
        name = callback.state_key
        seen[name] += 1
        keyed.append((name if seen[name] == 1 else f"{name}#{seen[name]}", callback))
    return keyed


def _saved_state(saved: dict[str, Any], key: str) -> Any:
    """The state saved under ``key``, also from checkpoints of hat 0.1, whose keys were
    ``INDEX:ClassName`` (the n-th such key for ``ClassName#n``)."""
    if key in saved:
        return saved[key]
    name, _, nth = key.partition("#")
    legacy = sorted(
        (int(match.group(1)), k)
        for k in saved
        if (match := re.fullmatch(r"(\d+):" + re.escape(name), str(k)))
    )
    index = int(nth or 1) - 1
    return saved[legacy[index][1]] if index < len(legacy) else None


def log_size(ctx: LoopContext) -> int:
    try:
        return ctx.log_path.stat().st_size
    except FileNotFoundError:
        return 0


def checkpoint_state(ctx: LoopContext) -> dict[str, Any]:
    """Everything needed to continue ``ctx`` exactly; loadable with ``weights_only=True``."""
    return {
        "state_dict": ctx.model.state_dict(),
        "optimizer": ctx.optimizer.state_dict() if ctx.optimizer is not None else None,
        "lr_scheduler": ctx.lr_scheduler.state_dict() if ctx.lr_scheduler is not None else None,
        "grad_scaler": ctx.grad_scaler.state_dict() if ctx.grad_scaler is not None else None,
        "epoch": ctx.epoch,
        "global_step": ctx.global_step,
        "step_in_epoch": ctx.step_in_epoch,
        "metrics": dict(ctx.metrics),
        "finished": ctx.finished,
        "rng": rng_state(),
        "callbacks": {key: cb.state_dict() for key, cb in _keyed(ctx.callbacks)},
        "log_offset": log_size(ctx),
        "meta": {
            "format_version": FORMAT_VERSION,
            "hat_version": _hat_version(),
            "torch_version": str(torch.__version__),
            "python_version": platform.python_version(),
            "stage": ctx.stage,
            "spec_name": ctx.spec_name,
            "qat_mode": ctx.qat_mode,
            "world_size": ctx.world_size,
            "model_class": type(ctx.model).__name__,
            "optimizer_class": type(ctx.optimizer).__name__ if ctx.optimizer else None,
        },
    }


def restore_training_state(
    ctx: LoopContext,
    checkpoint: dict[str, Any],
    *,
    optimizer: bool,
    position: bool,
    source: str = "checkpoint",
) -> None:
    """Apply the seed's resume uses: everything (``position`` too), or a fine-tune
    (``optimizer`` alone): the optimizer's state (momentum, ...) continues while the
    learning rate follows this stage's own schedule from its start, as HAT's fine-tune
    does; restoring the old schedule's position would train at its end (often 0)."""
    if optimizer and ctx.optimizer is not None and checkpoint.get("optimizer") is not None:
        meta = checkpoint.get("meta", {})
        saved = meta.get("optimizer_class")
        if saved is not None and saved != type(ctx.optimizer).__name__:
            raise CheckpointError(
                f"{source}: its optimizer state is {saved}'s, but this stage uses "
                f"{type(ctx.optimizer).__name__}; set resume_optimizer: false"
            )
        schedule: list[dict[str, Any]] = [
            {key: group[key] for key in ("lr", "initial_lr") if key in group}
            for group in ctx.optimizer.param_groups
        ]
        try:
            ctx.optimizer.load_state_dict(checkpoint["optimizer"])
            if not position:
                for group, own in zip(ctx.optimizer.param_groups, schedule, strict=True):
                    group.update(own)
            elif ctx.lr_scheduler is not None and checkpoint.get("lr_scheduler") is not None:
                ctx.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"{source}: its optimizer or LR scheduler state does not fit this stage ({exc})"
            ) from None
    if not position:
        return
    ctx.epoch = int(checkpoint.get("epoch", 0))
    ctx.global_step = int(checkpoint.get("global_step", 0))
    ctx.step_in_epoch = int(checkpoint.get("step_in_epoch", 0))
    ctx.metrics = dict(checkpoint.get("metrics", {}))
    saved = checkpoint.get("callbacks", {})
    try:
        for key, callback in _keyed(ctx.callbacks):
            state = _saved_state(saved, key)
            if state is not None:
                callback.load_state_dict(state)
        if "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])
        scaler = getattr(ctx, "grad_scaler", None)  # fp16's; not on every context
        if scaler is not None and checkpoint.get("grad_scaler"):
            scaler.load_state_dict(checkpoint["grad_scaler"])
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: damaged or crafted checkpoint: {exc}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(
            f"{source}: damaged or crafted checkpoint: its training state does not load "
            f"({type(exc).__name__}: {exc})"
        ) from None
