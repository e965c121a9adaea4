"""Nothing lost, nothing silent: what hat may delete, the work_dir lock, `best`, checkpoint
names, export outputs, damaged checkpoints, and runs that end early."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from plugin_site import write_plugin_site

import hatcli
from hatcli.engine import checkpoint_io
from hatcli.engine.checkpoint_io import atomic_write_bytes, load_checkpoint, save_checkpoint
from hatcli.engine.resume import find_resume_point
from hatcli.engine.training_log import truncate_log
from hatcli.engine.work_dir_lock import locked_stages
from hatcli.errors import CheckpointError, RunError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits" / "spec.yaml"
FLOAT_CALLBACKS = """    num_epochs: 12
    callbacks:
      - {type: Validation, data: val}
      - {type: Checkpoint, name_prefix: float-, monitor_metric_key: accuracy, mode: max}"""


def write_spec(folder: Path, old: str = "", new: str = "") -> Path:
    text = EXAMPLE.read_text()
    assert old in text
    path = folder / "spec.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def short_float(folder: Path, stage_text: str, work_dir: str = "runs") -> hatcli.Spec:
    path = write_spec(folder, FLOAT_CALLBACKS, stage_text)
    return hatcli.load_spec(path, work_dir=folder / work_dir if work_dir else None)


def val_records(work_dir: Path) -> list[dict]:
    lines = (work_dir / "float" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "val"]


# --- 1. what training deletes -----------------------------------------------------------


def test_training_removes_only_its_own_stale_temp_files(tmp_path: Path) -> None:
    work = tmp_path / "runs"
    work.mkdir()
    others = [".thesis.tmp", ".float-checkpoint-last.pth.tar.tmp", ".notes.txt.abcd1234.hat-tmp"]
    for name in others:
        (work / name).write_text("draft")
    own = work / ".float-checkpoint-last.pth.tar.x1y2z3_4.hat-tmp"
    own.write_bytes(b"half a checkpoint")
    spec = short_float(tmp_path, "    num_steps: 2\n    callbacks:\n      - {type: Checkpoint}")
    hatcli.run_stage(spec, "float")
    assert not own.exists()
    assert sorted(p.name for p in work.glob(".*tmp")) == sorted(others)
    assert all((work / name).read_text() == "draft" for name in others)


def test_a_failed_write_leaves_the_old_file_and_names_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "float-checkpoint-last.pth.tar"
    target.write_bytes(b"the good one")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_io.os, "fsync", disk_full)
    with pytest.raises(RunError, match=rf"cannot write {target}: No space left on device"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"the good one"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temp file left


# --- 2. the work_dir lock ---------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_of_a_stage_fails_at_once_naming_the_holder(tmp_path: Path, run_hat) -> None:
    spec = write_spec(tmp_path)
    work = tmp_path / "runs" / "digits"
    with locked_stages(work, ["float"]):
        result = run_hat("train", spec, "--stage", "float", "-q")
        other_stage = run_hat("train", spec, "--stage", "nope", "-q")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"error: {Path('runs/digits')} is in use by pid {os.getpid()} (stage float); wait "
        "for that run to end, or give this one another --work-dir"
    )
    assert not (work / "float" / "metrics.jsonl").exists()
    assert other_stage.returncode == 2 and "in use" not in other_stage.stderr


def test_the_lock_of_a_killed_run_is_released(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from hatcli.engine.work_dir_lock import locked_stages\n"
            f"with locked_stages(Path({str(tmp_path)!r}), ['float']):\n"
            "    print('held', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with (
        pytest.raises(hatcli.InputError, match=rf"in use by pid {holder.pid} \(stage float\)"),
        locked_stages(tmp_path, ["float"]),
    ):
        pass
    holder.kill()
    holder.wait()
    # No stale lock after SIGKILL, and stages do not block each other.
    with locked_stages(tmp_path, ["float"]), locked_stages(tmp_path, ["qat"]):
        pass


@pytest.mark.slow
def test_the_launcher_holds_the_lock_of_a_distributed_run(tmp_path: Path, run_hat) -> None:
    spec = write_spec(tmp_path)
    with locked_stages(tmp_path / "runs" / "digits", ["qat"]):
        result = run_hat("train", spec, "--stage", "all", "--nproc", "2", "-q")
    assert result.returncode == 2
    assert "is in use by" in result.stderr and "(stage qat)" in result.stderr
    assert not (tmp_path / "runs" / "digits" / "float" / "metrics.jsonl").exists()


# --- 3. `best` is decided when a validation result arrives --------------------------------


# 12 steps an epoch: a save every 4 steps lands on each epoch's end, before its validation.
@pytest.mark.parametrize("save_interval", [4, 7])
@pytest.mark.slow
def test_best_is_the_best_validation_result_whatever_the_step_interval(
    tmp_path: Path, save_interval: int
) -> None:
    spec = short_float(
        tmp_path,
        "    num_epochs: 4\n    callbacks:\n      - {type: Validation}\n"
        "      - {type: Checkpoint, monitor_metric_key: accuracy, interval_by: step, "
        f"save_interval: {save_interval}}}",
    )
    spec.data["stages"]["float"]["optimizer"]["lr"] = 0.5  # a bumpy run: the last is not best
    spec.data["data"]["train"]["batch_size"] = 128
    hatcli.run_stage(spec, "float")
    results = val_records(tmp_path / "runs")
    best_record = max(results, key=lambda r: r["accuracy"])  # the first of equals
    assert best_record is not results[-1]  # else this run could not tell best from last
    best = torch.load(tmp_path / "runs" / "float-checkpoint-best.pth.tar", weights_only=True)
    assert best["metrics"]["accuracy"] == best_record["accuracy"]
    assert best["global_step"] == best_record["step"]
    assert best["best"]["value"] == best_record["accuracy"]


@pytest.mark.slow
def test_a_validation_between_interval_saves_still_updates_best(tmp_path: Path) -> None:
    spec = short_float(
        tmp_path,
        "    num_steps: 30\n    callbacks:\n"
        "      - {type: Validation, every: 10, interval_by: step, at_end: false}\n"
        "      - {type: Checkpoint, monitor_metric_key: loss, mode: min, interval_by: step, "
        "save_interval: 1000, save_last: false}",
    )
    hatcli.run_stage(spec, "float")
    results = val_records(tmp_path / "runs")
    assert [r["step"] for r in results] == [10, 20, 30]
    best = torch.load(tmp_path / "runs" / "float-checkpoint-best.pth.tar", weights_only=True)
    assert best["metrics"]["loss"] == min(r["loss"] for r in results)


# --- 4. stages keep their own checkpoints -------------------------------------------------


@pytest.mark.slow
def test_stages_without_name_prefix_write_their_own_files(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    for stage in ("float", "calibration", "qat", "int_infer"):
        text = text.replace(f", name_prefix: {stage}-", "")
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    loaded = hatcli.load_spec(spec, work_dir=tmp_path / "runs")
    loaded.data["data"]["train"]["batch_size"] = 256
    loaded.data["stages"]["float"]["num_epochs"] = 1
    loaded.data["stages"]["calibration"]["num_steps"] = 2
    loaded.data["stages"]["qat"]["num_epochs"] = 1
    for stage in loaded.stage_names:
        hatcli.run_stage(loaded, stage)
    for stage in loaded.stage_names:
        last = torch.load(tmp_path / "runs" / f"{stage}-checkpoint-last.pth.tar", weights_only=True)
        assert last["meta"]["stage"] == stage
    point = find_resume_point(loaded, "float")
    assert point.checkpoint["meta"]["stage"] == "float" and point.finished


def test_two_checkpoints_writing_the_same_files_are_a_spec_error(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        "      - {type: Checkpoint, name_prefix: qat-, monitor_metric_key: accuracy, mode: max}",
        "      - {type: Checkpoint, name_prefix: float-}",
    )
    with pytest.raises(hatcli.SpecError) as caught:
        hatcli.load_spec(spec)
    line = spec.read_text().splitlines().index("      - {type: Checkpoint, name_prefix: float-}")
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (line + 1, 9)
    assert "same files as the one in stage 'float'" in problem.message


# --- 5. exports never replace what they should not ----------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    spec = short_float(folder, "    num_steps: 3\n    callbacks:\n      - {type: Checkpoint}", "")
    spec = hatcli.load_spec(spec.path, work_dir=folder / "runs")
    hatcli.run_stage(spec, "float")
    return folder


@pytest.mark.parametrize(
    "target",
    ["runs/float-checkpoint-best.pth.tar", "runs/float-checkpoint-last.pth.tar", "spec.yaml"],
)
@pytest.mark.slow
def test_export_never_writes_over_the_spec_or_a_checkpoint(
    trained: Path, hat_cli, target: str
) -> None:
    before = (trained / target).read_bytes()
    result = hat_cli(
        "export", "spec.yaml", "--stage", "float", "-f", "torchscript", "--work-dir", "runs",
        "-o", target, "--force", cwd=trained,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "refusing to write over" in result.stderr
    assert (trained / target).read_bytes() == before


@pytest.mark.slow
def test_export_replaces_an_existing_output_only_with_force(trained: Path, hat_cli) -> None:
    out = trained / "mine.pt"
    out.write_bytes(b"someone's file")
    args = ("export", "spec.yaml", "-s", "float", "-f", "torchscript", "--work-dir", "runs")
    refused = hat_cli(*args, "-o", out, cwd=trained)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"error: --output {out} exists; pass --force to replace it"
    assert out.read_bytes() == b"someone's file"
    forced = hat_cli(*args, "-o", out, "--force", cwd=trained)
    assert forced.returncode == 0, forced.stderr
    assert torch.jit.load(out) is not None


# --- 6 and 11. damaged and crafted checkpoints --------------------------------------------


def checkpoint_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def minimal_state(**fields: object) -> dict:
    return {"state_dict": {"w": torch.zeros(2)}, "meta": {"stage": "float"}, **fields}


def test_a_damaged_compression_method_field_is_a_damaged_checkpoint(tmp_path: Path) -> None:
    data = bytearray(checkpoint_bytes(minimal_state()))
    central = data.rfind(b"PK\x01\x02")  # the central directory's last record
    data[central + 10 : central + 12] = (99).to_bytes(2, "little")  # its compression method
    path = tmp_path / "c.pth.tar"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_resume_falls_back_from_any_kind_of_damaged_last(tmp_path: Path) -> None:
    spec = short_float(
        tmp_path,
        "    num_steps: 4\n    callbacks:\n"
        "      - {type: Checkpoint, interval_by: step, save_interval: 2, max_keep: 2}",
    )
    hatcli.run_stage(spec, "float")
    last = tmp_path / "runs" / "float-checkpoint-last.pth.tar"
    data = bytearray(last.read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the central directory's copy of the method
    data[central + 10 : central + 12] = (99).to_bytes(2, "little")
    last.write_bytes(bytes(data))
    with zipfile.ZipFile(last) as archive, pytest.raises(NotImplementedError):
        archive.testzip()  # what used to escape as "run failed: NotImplementedError"
    warnings: list[str] = []
    point = find_resume_point(spec, "float", warn=warnings.append)
    assert point.path.name == "float-checkpoint-step-0004.pth.tar"
    assert "corrupt" in warnings[0]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"epoch": "abc"}, "'epoch' is 'abc', not a count"),
        ({"global_step": -3}, "'global_step' is -3, not a count"),
        ({"finished": "yes"}, "'finished' is 'yes'"),
        ({"meta": {"world_size": "two"}}, "meta 'world_size' is 'two'"),
        ({"metrics": {"accuracy": "high"}}, "'metrics' is not a mapping of names to numbers"),
        ({"optimizer": [1, 2]}, "'optimizer' is not a mapping"),
    ],
)
def test_crafted_checkpoint_fields_are_refused_as_damaged_input(
    tmp_path: Path, fields: dict, problem: str
) -> None:
    path = tmp_path / "c.pth.tar"
    path.write_bytes(checkpoint_bytes(minimal_state(**fields)))
    with pytest.raises(CheckpointError, match="damaged or crafted checkpoint") as caught:
        load_checkpoint(path)
    assert problem in str(caught.value)


@pytest.mark.slow
def test_resume_from_a_crafted_checkpoint_exits_2(tmp_path: Path, run_hat) -> None:
    spec = write_spec(tmp_path)
    crafted = tmp_path / "crafted.pth.tar"
    save_checkpoint(minimal_state(epoch="abc"), crafted)
    result = run_hat("resume", spec, "--stage", "float", "--from", crafted)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(f"error: {crafted}: damaged or crafted checkpoint")


# --- 9. a run exits 0 only when the stage finished ----------------------------------------

EXITING_MODEL = textwrap.dedent("""
    import sys
    import torch
    from hatcli.hookspecs import hookimpl

    class Quitter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(64, 10)

        def forward(self, x):
            sys.exit(0)

    @hookimpl
    def hat_register_models(register):
        register("Quitter", Quitter)
""")


@pytest.mark.slow
def test_a_model_calling_sys_exit_fails_the_run(tmp_path: Path, run_hat) -> None:
    env = write_plugin_site(tmp_path / "site", "hat_test_quitter", EXITING_MODEL)
    spec = write_spec(tmp_path, "{type: DigitsNet, num_classes: 10, width: 16}", "Quitter")
    result = run_hat("train", spec, "--stage", "float", "-q", env=env)
    assert result.returncode == 1
    assert "run failed: the run called sys.exit(0) before it finished" in result.stderr
    assert not (tmp_path / "runs" / "digits" / "float" / "summary.json").exists()


# --- 13. metrics.jsonl after a kill ---------------------------------------------------------


def log_line(step: int, event: str = "train") -> bytes:
    return json.dumps({"stage": "float", "event": event, "step": step}).encode() + b"\n"


def test_resume_cuts_the_log_back_to_its_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    kept = log_line(10) + log_line(20) + log_line(20, "val")
    log.write_bytes(kept + log_line(30) + b'{"stage": "float", "ev')
    truncate_log(log, len(kept), 20)
    assert log.read_bytes() == kept
    log.write_bytes(kept[:-5])  # shorter than the checkpoint knew (a full disk): whole lines
    truncate_log(log, len(kept), 20)
    assert log.read_bytes() == log_line(10) + log_line(20)
    log.write_bytes(kept + log_line(30))  # a checkpoint from before log offsets: by step
    truncate_log(log, None, 20)
    assert log.read_bytes() == kept


# --- callback state keys ---------------------------------------------------------------------


def test_callback_state_is_found_by_state_key_and_in_checkpoints_of_hat_0_1() -> None:
    from types import SimpleNamespace

    from hat_callbacks.checkpoint import Checkpoint

    from hatcli.engine.state import restore_training_state

    first, second = Checkpoint(name_prefix="a-"), Checkpoint(name_prefix="b-")
    ctx = SimpleNamespace(optimizer=None, callbacks=[first, second])
    new = {"callbacks": {"Checkpoint": {"best": 0.5}, "Checkpoint#2": {"best": 0.25}}}
    restore_training_state(ctx, new, optimizer=False, position=True)  # type: ignore[arg-type]
    assert (first.best, second.best) == (0.5, 0.25)
    # hat 0.1 keyed by position among the spec's callbacks (here after a Validation).
    old = {"callbacks": {"0:Validation": {}, "1:Checkpoint": {"best": 0.7}, "2:Checkpoint": {}}}
    restore_training_state(ctx, old, optimizer=False, position=True)  # type: ignore[arg-type]
    assert (first.best, second.best) == (0.7, None)
