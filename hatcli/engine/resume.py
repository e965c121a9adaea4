"""`hat resume`: find the checkpoint a stage continues from, and refuse one that cannot fit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hatcli.engine.build import build_component
from hatcli.engine.checkpoint_files import CheckpointFiles
from hatcli.engine.checkpoint_io import load_checkpoint
from hatcli.engine.convert import stage_qat_mode
from hatcli.errors import CheckpointError, InputError
from hatcli.spec.spec import Spec


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    checkpoint: dict[str, Any]

    @property
    def finished(self) -> bool:
        return bool(self.checkpoint.get("finished"))

    @property
    def position(self) -> str:
        return (
            f"epoch {self.checkpoint.get('epoch', 0)}, step {self.checkpoint.get('global_step', 0)}"
        )


def checkpoint_files(spec: Spec, stage_name: str) -> list[CheckpointFiles]:
    """The files the stage's checkpointing callbacks write, as each says."""
    stage = spec.stage(stage_name)
    found = []
    for index, node in enumerate(stage.get("callbacks") or []):
        where = stage.where("callbacks", index)
        callback = build_component("callbacks", node, where, spec.positions)
        files = callback.checkpoint_files(stage_name, spec.work_dir)
        if files is not None:
            found.append(files)
    return found


def candidates(spec: Spec, stage_name: str) -> list[Path]:
    """The stage's checkpoints, preferred first: last, interval ones (newest first), best."""
    found = checkpoint_files(spec, stage_name)
    return [path for files in found for path in files.resume_candidates()]


def find_resume_point(
    spec: Spec,
    stage_name: str,
    from_path: Path | None = None,
    warn: Callable[[str], None] = lambda message: None,
    world_size: int = 1,
) -> ResumePoint:
    """The checkpoint to continue ``stage_name`` from, checked against the spec."""
    if from_path is not None:
        point = ResumePoint(from_path, load_checkpoint(from_path))
    else:
        paths = candidates(spec, stage_name)
        if not paths:
            raise InputError(
                f"stage {stage_name!r} has no Checkpoint callback, so there is nothing to "
                "resume from; give a checkpoint with --from PATH"
            )
        existing = [p for p in paths if p.is_file()]
        if not existing:
            raise InputError(
                f"nothing to resume for stage {stage_name!r}: {paths[0]} does not exist; "
                f"start the stage with 'hat train {spec.path} --stage {stage_name}'"
            )
        intact = _first_intact(existing, warn)
        if intact is None:
            raise InputError(f"no intact checkpoint to resume stage {stage_name!r} from")
        point = intact
        if point.path != existing[0]:
            warn(f"resuming from {point.path} ({point.position})")
    check_fits(spec, stage_name, point, world_size)
    return point


def _first_intact(paths: list[Path], warn: Callable[[str], None]) -> ResumePoint | None:
    for path in paths:
        try:
            return ResumePoint(path, load_checkpoint(path))
        except CheckpointError as exc:
            warn(f"{exc}; trying an older checkpoint")
    return None


def check_fits(spec: Spec, stage_name: str, point: ResumePoint, world_size: int = 1) -> None:
    """Refuse a checkpoint from another stage, qat_mode or world size."""
    meta = point.checkpoint.get("meta", {})
    saved_stage = meta.get("stage")
    if saved_stage is not None and saved_stage != stage_name:
        raise CheckpointError(
            f"{point.path}: saved by stage {saved_stage!r}, not {stage_name!r}; resume "
            f"'{saved_stage}' instead, or give --from a checkpoint of {stage_name!r}"
        )
    wanted_mode = stage_qat_mode(spec.stage(stage_name))
    saved_mode = meta.get("qat_mode")
    if saved_mode is not None and saved_mode != wanted_mode:
        raise CheckpointError(
            f"{point.path}: saved with qat_mode {saved_mode!r} but the spec now says "
            f"{wanted_mode!r}; set it back to resume, or start the stage again with hat train"
        )
    saved_world = int(meta.get("world_size", 1))
    if saved_world != world_size:
        raise CheckpointError(
            f"{point.path}: saved by {saved_world} processes but this run has {world_size}; "
            f"resume with the same number of processes"
        )
