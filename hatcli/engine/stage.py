"""Assembling a stage from its spec and running it to the end."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from hatcli import plugins
from hatcli.engine import distributed
from hatcli.engine.build import build_component, located, split_node
from hatcli.engine.callback import Callback
from hatcli.engine.checkpoint_io import atomic_write_bytes
from hatcli.engine.context import LoopContext
from hatcli.engine.convert import ConvertContext, stage_qat_mode
from hatcli.engine.launch import LAUNCHED_BY_HAT
from hatcli.engine.load_weights import load_weights
from hatcli.engine.loop import Trainer
from hatcli.engine.progress import ProgressReporter
from hatcli.engine.resume import ResumePoint
from hatcli.engine.sampler import EpochSampler, WorkerSeeder
from hatcli.engine.state import restore_training_state
from hatcli.engine.training_log import TrainingLog, truncate_log
from hatcli.engine.transforms import TransformedDataset
from hatcli.engine.work_dir_lock import locked_stages
from hatcli.errors import InputError
from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.graph.report import OpRecord
from hatcli.quant.graph.report import as_json as quantization_json
from hatcli.quant.graph.report import as_table as quantization_table
from hatcli.quant.nn.quantized import kernels as integer_kernels
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.spec import defaults
from hatcli.spec.spec import Spec, StageSpec

LOADER_KEYS = (
    "batch_size",
    "shuffle",
    "drop_last",
    "num_workers",
    "pin_memory",
    "persistent_workers",
    "prefetch_factor",
    "transforms",
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for but CUDA is not available here")
    return torch.device(name)


def _is_integer_model(model: nn.Module) -> bool:
    return any(isinstance(m, IntegerModule) for m in model.modules())


def _stage(spec: Spec, stage: str | StageSpec) -> StageSpec:
    return stage if isinstance(stage, StageSpec) else spec.stage(stage)


def build_model(
    spec: Spec, stage: str | StageSpec, *, context: ConvertContext | None = None
) -> nn.Module:
    """The model as ``stage`` runs it: built by its factory, then its convert pipeline."""
    stage = _stage(spec, stage)
    model = build_component("models", stage.get("model"), stage.where("model"), spec.positions)
    if not isinstance(model, nn.Module):
        raise located(spec.positions, stage.where("model"), "the factory did not return a Module")
    pipeline = stage.get("model_convert_pipeline") or {}
    qat_mode = stage_qat_mode(stage)
    context = context or ConvertContext(stage.name, qat_mode, spec.positions)
    context.qat_mode = qat_mode
    context.qconfig = pipeline.get("qconfig")
    context.qconfig_path = stage.where("model_convert_pipeline", "qconfig")
    for index, node in enumerate(pipeline.get("converters", [])):
        path = stage.where("model_convert_pipeline", "converters", index)
        converter = build_component("converters", node, path, spec.positions)
        context.path = path
        model = converter(model, context)
        if not isinstance(model, nn.Module):
            raise located(spec.positions, path, "the converter did not return a Module")
    return model


def build_data_loader(
    spec: Spec, split: str, stage: str | StageSpec | None = None
) -> DataLoader[Any]:
    """A DataLoader of ``(inputs, targets)`` for ``split`` of ``stage`` (or the top level)."""
    if stage is not None:
        stage = _stage(spec, stage)
        splits, where = stage.get("data") or {}, stage.where("data")
        seed = int(stage.get("seed"))
    else:
        splits, where, seed = spec.data.get("data") or {}, ("data",), spec.seed
    if split not in splits:
        known = ", ".join(sorted(splits)) or "none"
        raise located(spec.positions, where, f"no data loader {split!r} (the spec has: {known})")
    node = splits[split]
    dataset = build_component("datasets", node, (*where, split), spec.positions, drop=LOADER_KEYS)
    settings = node if isinstance(node, dict) else {}
    transforms = [
        build_component("transforms", item, (*where, split, "transforms", index), spec.positions)
        for index, item in enumerate(settings.get("transforms") or [])
    ]
    if transforms:
        dataset = TransformedDataset(dataset, transforms, seed, distributed.rank())
    sampler = EpochSampler(
        dataset,
        bool(settings.get("shuffle", defaults.SHUFFLE)),
        seed,
        rank=distributed.rank(),
        world_size=distributed.world_size(),
        pad=split == "train",  # training ranks take equal steps; evaluation splits exactly
        keyed=bool(transforms),  # (index, epoch): each sample's random draws are its own
    )
    workers = loader_workers(settings.get("num_workers", defaults.NUM_WORKERS))
    return DataLoader(
        dataset,
        batch_size=int(settings.get("batch_size", defaults.BATCH_SIZE)),
        sampler=sampler,
        drop_last=bool(settings.get("drop_last", defaults.DROP_LAST)),
        num_workers=workers,
        # Page-locked memory only helps copies to a GPU (torch warns without one).
        pin_memory=torch.cuda.is_available()
        and bool(settings.get("pin_memory", defaults.PIN_MEMORY)),
        persistent_workers=workers > 0
        and bool(settings.get("persistent_workers", defaults.PERSISTENT_WORKERS)),
        prefetch_factor=settings.get("prefetch_factor") if workers > 0 else None,
        worker_init_fn=WorkerSeeder(seed, sampler) if workers > 0 else None,
        # Its own generator: iterating must not draw from the global RNG, or a resumed
        # run's random state would drift from the uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), or all of the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def local_ranks() -> int:
    """Processes of this run on this machine (``--nproc``, torchrun's LOCAL_WORLD_SIZE)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or distributed.launched_world_size()))


def loader_workers(asked: int | str) -> int:
    """``num_workers``: as given, or for ``auto`` this process's share of the cores
    (0, loading in the training process, when that share is a single core)."""
    if asked != "auto":
        return int(asked)
    share = available_cores() // local_ranks()
    return share if share > 1 else 0


def _build_callbacks(spec: Spec, stage: StageSpec) -> list[Callback]:
    callbacks = []
    for index, node in enumerate(stage.get("callbacks") or []):
        where = stage.where("callbacks", index)
        callback = build_component("callbacks", node, where, spec.positions)
        if not isinstance(callback, Callback):
            raise located(
                spec.positions, where, "the factory did not return a hatcli.Callback (subclass it)"
            )
        callbacks.append(callback)
    return callbacks


def _build_scheduler(
    spec: Spec, stage: StageSpec, optimizer: torch.optim.Optimizer, total_steps: int
) -> tuple[Any, str]:
    node = stage.get("lr_scheduler")
    if node is None:
        return None, "epoch"
    name, params = split_node(node, drop=("interval",))
    asked = node.get("interval", "epoch") if isinstance(node, dict) else "epoch"
    interval = "step" if stage.get("num_steps") else asked
    length = total_steps if interval == "step" else int(stage.get("num_epochs") or 1)
    properties = (plugins.get_component("lr_schedulers", name).schema or {}).get("properties", {})
    for key in ("T_max", "total_steps"):  # the stage's length, unless the spec sets it
        if key in properties and key not in params:
            params[key] = max(1, length)
    scheduler = build_component(
        "lr_schedulers",
        {"type": name, **params},
        stage.where("lr_scheduler"),
        spec.positions,
        optimizer,
    )
    return scheduler, interval


def build_context(
    spec: Spec,
    stage_name: str,
    *,
    quiet: bool = True,
    resume: ResumePoint | None = None,
    trainer: Trainer | None = None,
    verbose: bool = False,
) -> LoopContext:
    """Everything a stage needs, assembled and checked, before any training starts.

    With ``resume``, the checkpoint is loaded after the convert pipeline and the whole
    training state (optimizer, position, RNG, callbacks) continues from it.
    """
    stage = spec.stage(stage_name)
    seed_everything(int(stage.get("seed")))
    device = stage_device(spec, stage)
    convert = ConvertContext(stage.name, stage_qat_mode(stage), spec.positions)
    model = _build_stage_model(spec, stage, convert, resume, trainer or Trainer()).to(device)
    channels_last = bool(stage.get("channels_last", defaults.CHANNELS_LAST))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    amp = stage_amp(stage, model)
    ctx = LoopContext(
        stage=stage.name,
        spec_name=spec.name,
        work_dir=spec.work_dir,
        model=model,
        device=device,
        data_loaders=_build_loaders(spec, stage),
        loss_fn=build_component(
            "losses", stage.get("loss", defaults.LOSS), stage.where("loss"), spec.positions
        ),
        batch_processor=build_component(
            "batch_processors",
            stage.get("batch_processor") or defaults.BATCH_PROCESSOR,
            stage.where("batch_processor"),
            spec.positions,
        ),
        num_epochs=stage.get("num_epochs"),
        num_steps=stage.get("num_steps"),
        qat_mode=convert.qat_mode,
        log_interval=int(stage.get("log_interval", defaults.LOG_INTERVAL)),
        amp=amp,
        grad_scaler=torch.amp.GradScaler(device.type) if amp == "fp16" else None,
        channels_last=channels_last,
        rank=distributed.rank(),
        world_size=distributed.world_size(),
    )
    if ctx.is_main and "quantization" in convert.notes:
        _report_quantization(ctx, convert.notes["quantization"], quiet, verbose)
    if ctx.is_main and verbose and _is_integer_model(model):
        print(f"[{ctx.stage}] {integer_kernels.describe()}", file=sys.stderr)
    _build_optimizer(spec, stage, ctx)
    ctx.callbacks = _checked_callbacks(spec, stage, ctx, quiet)
    if convert.loaded_checkpoint is not None:
        full = resume is not None
        restore_training_state(
            ctx,
            convert.loaded_checkpoint,
            optimizer=full or bool(stage.get("resume_optimizer", defaults.RESUME_OPTIMIZER)),
            position=full or stage_resumes(stage),
            source=str(resume.path) if resume is not None else str(convert.loaded_from),
        )
    return ctx


def stage_amp(stage: StageSpec, model: nn.Module) -> str:
    """The stage's ``amp``; ``off`` for a model with fake quantization: QAT's arithmetic
    is the integer model's (float32 fake quantization, convolutions whose float32 sums
    the integer kernels reproduce), which bf16 or fp16 would no longer match."""
    amp = str(stage.get("amp", defaults.AMP))
    if any(isinstance(m, FakeQuantize) for m in model.modules()):
        return "off"
    return amp


def _report_quantization(
    ctx: LoopContext, report: tuple[str, list[OpRecord]], quiet: bool, verbose: bool
) -> None:
    """``quantization.json`` in the stage's folder; a one-line summary, and with
    ``--verbose`` the whole table, on stderr."""
    mode, records = report
    path = ctx.stage_dir / "quantization.json"
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, quantization_json(records, mode))
    if quiet:
        return
    counts = Counter(r.runs_as for r in records)
    summary = ", ".join(f"{n} {how}" for how, n in sorted(counts.items()))
    print(f"[{ctx.stage}] Float2QAT ({mode}): {summary}; see {path}", file=sys.stderr)
    if verbose:
        print(quantization_table(records), file=sys.stderr)


def stage_device(spec: Spec, stage: StageSpec) -> torch.device:
    try:
        return resolve_device(stage.get("device"))
    except InputError as exc:
        raise located(spec.positions, stage.where("device"), str(exc)) from None


def _build_stage_model(
    spec: Spec,
    stage: StageSpec,
    convert: ConvertContext,
    resume: ResumePoint | None,
    trainer: Trainer,
) -> nn.Module:
    """The factory's model through the convert pipeline, a resumed checkpoint's weights
    and the trainer's ``prepare_model``; an integer model may not train."""
    model = build_model(spec, stage, context=convert)
    if resume is not None:
        load_weights(model, resume.checkpoint, str(resume.path))
        convert.loaded_checkpoint = resume.checkpoint
    model = trainer.prepare_model(model)  # e.g. SyncBatchNorm, before the optimizer
    if stage.trains and _is_integer_model(model):
        key = "num_epochs" if stage.get("num_epochs") else "num_steps"
        raise located(
            spec.positions,
            stage.where(key),
            "the integer model (after QAT2Quantize) cannot train; set num_epochs: 0",
        )
    return model


def _build_loaders(spec: Spec, stage: StageSpec) -> dict[str, DataLoader[Any]]:
    loaders = {split: build_data_loader(spec, split, stage) for split in stage.get("data")}
    if stage.trains and "train" in loaders and len(loaders["train"]) == 0:
        raise located(
            spec.positions,
            stage.where("data", "train"),
            "the training data gives no batch (empty, or fewer samples than batch_size "
            "with drop_last)",
        )
    return loaders


def _build_optimizer(spec: Spec, stage: StageSpec, ctx: LoopContext) -> None:
    if stage.get("optimizer") is None:
        return
    ctx.optimizer = build_component(
        "optimizers",
        stage.get("optimizer"),
        stage.where("optimizer"),
        spec.positions,
        ctx.model.parameters(),
    )
    ctx.lr_scheduler, ctx.scheduler_interval = _build_scheduler(
        spec, stage, ctx.optimizer, ctx.total_steps
    )


def _checked_callbacks(
    spec: Spec, stage: StageSpec, ctx: LoopContext, quiet: bool
) -> list[Callback]:
    """The spec's callbacks and hat's own (log, progress), in ``order``, each checked
    against the assembled stage; a rejection is located at the callback."""
    own = _build_callbacks(spec, stage)
    ordered = sorted([*own, TrainingLog(), ProgressReporter(quiet=quiet)], key=lambda c: c.order)
    ctx.callbacks = ordered
    for callback in ordered:
        try:
            callback.check(ctx)
        except InputError as exc:
            index = own.index(callback) if callback in own else 0
            raise located(spec.positions, stage.where("callbacks", index), str(exc)) from None
    return ordered


def stage_resumes(stage: StageSpec) -> bool:
    return bool(stage.get("resume_epoch_or_step", defaults.RESUME_EPOCH_OR_STEP))


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def _build_trainer(spec: Spec, stage: StageSpec) -> Trainer:
    where = stage.where("trainer")
    trainer = build_component(
        "trainers", stage.get("trainer", defaults.TRAINER), where, spec.positions
    )
    if not isinstance(trainer, Trainer):
        raise located(
            spec.positions, where, "the factory did not return a hatcli Trainer (subclass it)"
        )
    processes = distributed.launched_world_size()
    if processes > 1 and not trainer.supports_distributed and stage.trains:
        raise located(
            spec.positions,
            where,
            f"this stage runs in {processes} processes but its trainer is not distributed; "
            "use trainer: distributed_data_parallel_trainer",
        )
    return trainer


def _run_lock(spec: Spec, stage_name: str) -> contextlib.AbstractContextManager[None]:
    """The work_dir lock of this run; under ``hat train --nproc`` the launcher holds it."""
    if os.environ.get(LAUNCHED_BY_HAT) or os.environ.get("LOCAL_RANK", "0") != "0":
        return contextlib.nullcontext()
    return locked_stages(spec.work_dir, [stage_name])


def run_stage(
    spec: Spec,
    stage_name: str,
    *,
    quiet: bool = True,
    resume: ResumePoint | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run one stage to its end (or continue it from ``resume``); write ``summary.json``.

    The stage's work_dir lock is held throughout: a second run of it fails at once.
    """
    with _run_lock(spec, stage_name):
        return _run_stage(spec, stage_name, quiet=quiet, resume=resume, verbose=verbose)


def _run_stage(
    spec: Spec, stage_name: str, *, quiet: bool, resume: ResumePoint | None, verbose: bool
) -> dict[str, Any]:
    stage = spec.stage(stage_name)
    trainer = _build_trainer(spec, stage)
    device = stage_device(spec, stage)
    try:
        trainer.setup(device)  # e.g. join the process group
    except InputError as exc:
        raise located(spec.positions, stage.where("trainer"), str(exc)) from None
    ctx = build_context(
        spec, stage_name, quiet=quiet, resume=resume, trainer=trainer, verbose=verbose
    )
    if ctx.is_main and resume is not None:
        saved = resume.checkpoint
        truncate_log(ctx.log_path, saved.get("log_offset"), int(saved.get("global_step", 0)))
    elif ctx.is_main and not stage_resumes(stage):
        ctx.log_path.unlink(missing_ok=True)  # a new run, a new log
    started = time.perf_counter()
    trainer.fit(ctx)
    summary = {
        "stage": ctx.stage,
        "spec": ctx.spec_name,
        "metrics": ctx.metrics,
        "epochs": ctx.epoch,
        "steps": ctx.global_step,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "qat_mode": ctx.qat_mode,
        "device": str(ctx.device),
        "finished": True,
        "resumed_from": str(resume.path) if resume is not None else None,
        "world_size": ctx.world_size,
    }
    if ctx.is_main:
        write_json(ctx.stage_dir / "summary.json", summary)
        draw_curves(spec, quiet)
    return summary


def draw_curves(spec: Spec, quiet: bool) -> None:
    """``{work_dir}/curves.png`` after a stage, when matplotlib is installed; a failure to
    draw is a note, never a failed stage."""
    if importlib.util.find_spec("matplotlib") is None:
        return
    from hatcli.curves import draw_spec

    try:
        path = draw_spec(spec)
    except Exception as exc:  # a figure must not cost a finished stage
        print(f"note: curves.png not drawn: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    if not quiet:
        print(f"curves: {path}", file=sys.stderr)
