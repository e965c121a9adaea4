"""distributed_data_parallel_trainer on real processes (gloo, 2 CPU workers)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from plugin_site import write_plugin_site

from hatcli import plugins

# Every test here starts several processes.
pytestmark = pytest.mark.slow

RANK_PLUGIN = textwrap.dedent("""
    import os
    import signal
    from pathlib import Path

    import torch
    import hatcli
    from hatcli.engine.callback import Callback

    class RankProbe(Callback):
        def on_step_end(self, ctx):
            if (folder := os.environ.get("HAT_TEST_PID_DIR")) and ctx.global_step == 1:
                Path(folder, f".rank{ctx.rank}").write_text(str(os.getpid()))
                Path(folder, f".rank{ctx.rank}").rename(Path(folder, f"rank{ctx.rank}"))
            if (ctx.global_step == int(os.environ.get("HAT_TEST_KILL_AT_STEP", "0"))
                    and ctx.rank == int(os.environ.get("HAT_TEST_KILL_RANK", "0"))):
                os.kill(os.getpid(), signal.SIGKILL)

        def on_loop_end(self, ctx):
            buffers = dict(ctx.model.named_buffers())
            torch.save(buffers, ctx.work_dir / f"buffers-{ctx.stage}-rank{ctx.rank}.pt")

    @hatcli.hookimpl
    def hat_register_callbacks(register):
        register("RankProbe", RankProbe, {"type": "object", "additionalProperties": False})
""")

SPEC = """\
version: 1
name: ddp
seed: 1
model: {type: DigitsNet, width: 8}
data:
  train: {type: Digits, split: train, batch_size: BATCH, shuffle: true}
  val: {type: Digits, split: val, batch_size: 100}
stages:
  float:
    trainer: {type: distributed_data_parallel_trainer, sync_bn: true}
    optimizer: {type: SGD, lr: 0.1, momentum: 0.9}
    num_steps: 30
    callbacks:
      - {type: RankProbe}
      - {type: Validation, every: 15, interval_by: step}
      - {type: Checkpoint, name_prefix: float-, interval_by: step, save_interval: 5}
  qat:
    trainer: distributed_data_parallel_trainer
    model_convert_pipeline:
      converters:
        - {type: LoadCheckpoint, checkpoint_path: 'FLOAT_CHECKPOINT'}
        - {type: Float2QAT}
    optimizer: {type: SGD, lr: 0.02, momentum: 0.9}
    num_steps: 12
    callbacks:
      - {type: RankProbe}
      - {type: Validation}
      - {type: Checkpoint, name_prefix: qat-}
  qat_bn:
    trainer: {type: distributed_data_parallel_trainer, sync_bn: true}
    model_convert_pipeline:
      qat_mode: with_bn_reverse_fold
      converters:
        - {type: LoadCheckpoint, checkpoint_path: 'FLOAT_CHECKPOINT'}
        - {type: Float2QAT, mode: graph}  # a traced model trains under DDP too
    optimizer: {type: SGD, lr: 0.02, momentum: 0.9}
    num_steps: 12
    callbacks:
      - {type: RankProbe}
      - {type: FuseBN, modules: [[stem]], step_or_epoch: [6]}
      - {type: Validation}
      - {type: Checkpoint, name_prefix: qat_bn-}
  int_infer:  # the plain Trainer: a stage that does not train runs in every process
    model_convert_pipeline:
      converters:
        - {type: Float2QAT}
        - {type: LoadCheckpoint, checkpoint_path: '{work_dir}/qat-checkpoint-last.pth.tar'}
        - {type: QAT2Quantize}
    num_epochs: 0
    callbacks:
      - {type: Validation}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = write_plugin_site(tmp_path_factory.mktemp("site"), "hat_test_rank", RANK_PLUGIN)
    # The launcher's own temporary folders go here, where a test can see what is left.
    return {**site, "TMPDIR": str(tmp_path_factory.mktemp("launcher-tmp"))}


def launcher_leftovers(env: dict[str, str]) -> list[Path]:
    return list(Path(env["TMPDIR"]).glob("hat-workers-*"))


def spec_file(folder: Path, batch: int, float_checkpoint: Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    start = float_checkpoint or folder / "float-checkpoint-last.pth.tar"
    path.write_text(SPEC.replace("BATCH", str(batch)).replace("FLOAT_CHECKPOINT", str(start)))
    return path


@pytest.fixture(scope="module")
def runs(hat_cli, env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """float then qat, once in 1 process with batch 64, once in 2 processes with batch 32;
    both qat stages start from the 1-process float weights, so they compare alone."""
    out: dict[str, Path] = {}
    for name, batch, nproc in (("one", 64, "1"), ("two", 32, "2")):
        work = tmp_path_factory.mktemp(name)
        start = out["one"] / "float-checkpoint-last.pth.tar" if out else None
        spec = spec_file(work, batch, start)
        stages = ("float", "qat", "qat_bn", "int_infer") if nproc == "2" else ("float", "qat")
        for stage in stages:
            result = hat_cli(
                "train",
                spec,
                "--stage",
                stage,
                "--work-dir",
                work,
                "--nproc",
                nproc,
                "-q",
                env=env,
            )
            assert result.returncode == 0, result.stderr
        out[name] = work
    return out


def test_a_stage_that_does_not_train_runs_distributed_with_the_plain_trainer(runs) -> None:
    summary = json.loads((runs["two"] / "int_infer" / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 2
    qat = json.loads((runs["two"] / "qat" / "summary.json").read_text())
    # The integer model validated on all of val (both shares, reduced) is the QAT model.
    assert summary["metrics"]["accuracy"] == qat["metrics"]["accuracy"]


def states(work: Path, stage: str) -> dict[str, torch.Tensor]:
    return torch.load(work / f"{stage}-checkpoint-last.pth.tar", weights_only=True)["state_dict"]


def test_two_processes_train_like_one_with_twice_the_batch_float(runs) -> None:
    one, two = states(runs["one"], "float"), states(runs["two"], "float")
    assert one.keys() == two.keys()
    for name, tensor in one.items():  # only the order of summation differs
        torch.testing.assert_close(two[name].float(), tensor.float(), rtol=1e-4, atol=1e-5)


def test_two_processes_train_like_one_with_twice_the_batch_qat(runs) -> None:
    # A last-bit difference can move a value across a rounding boundary of the fake
    # quantizer, after which a few weights differ by about one quantization step.
    one, two = states(runs["one"], "qat"), states(runs["two"], "qat")
    assert one.keys() == two.keys()
    close = total = 0
    for name, tensor in one.items():
        diff = (two[name].float() - tensor.float()).abs()
        assert diff.max() <= 0.02, name
        close += int((diff <= 1e-3).sum())
        total += diff.numel()
    assert close / total >= 0.99


@pytest.mark.parametrize("stage", ["qat", "qat_bn"])
def test_observer_scales_and_bn_statistics_are_identical_on_both_ranks(runs, stage: str) -> None:
    rank0 = torch.load(runs["two"] / f"buffers-{stage}-rank0.pt", weights_only=True)
    rank1 = torch.load(runs["two"] / f"buffers-{stage}-rank1.pt", weights_only=True)
    assert any("activation_post_process" in k for k in rank0) and rank0.keys() == rank1.keys()
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name
    if stage == "qat_bn":  # SyncBatchNorm kept the qconfig of QAT BN; FuseBN fired under DDP
        assert "down.bn.running_mean" in rank0 and "stem.bn.running_mean" not in rank0

        def accuracy(stage: str) -> float:
            summary = json.loads((runs["two"] / stage / "summary.json").read_text())
            return summary["metrics"]["accuracy"]

        assert accuracy("qat_bn") > accuracy("float")  # it trained on from the float weights


def test_metrics_are_reduced_and_every_file_is_written_once(runs) -> None:
    def files(work: Path) -> list[str]:
        return sorted(
            str(p.relative_to(work))
            for p in work.rglob("*")
            # qat_bn and int_infer run only in the 2-process run
            if "buffers-" not in p.name
            and not str(p.relative_to(work)).startswith(("qat_bn", "int_infer"))
        )

    assert files(runs["two"]) == files(runs["one"])
    summary = json.loads((runs["two"] / "float" / "summary.json").read_text())
    assert summary["world_size"] == 2
    records = [json.loads(line) for line in (runs["two"] / "float" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if r["event"] == "val"] == [15, 30]
    one = json.loads((runs["one"] / "float" / "summary.json").read_text())
    # Exact counts over ranks: the same accuracy, to the sample, as one process.
    assert summary["metrics"]["accuracy"] == one["metrics"]["accuracy"]


def test_a_killed_rank_stops_the_run_and_resume_continues_it(
    hat_cli, env, runs, tmp_path: Path
) -> None:
    spec = spec_file(tmp_path, 32)
    killed = hat_cli(
        "train",
        spec,
        "--stage",
        "float",
        "--work-dir",
        tmp_path,
        "--nproc",
        "2",
        "-q",
        env={**env, "HAT_TEST_KILL_AT_STEP": "13", "HAT_TEST_KILL_RANK": "1"},
    )
    assert killed.returncode != 0
    assert "worker rank 1 failed first" in killed.stderr
    assert "Traceback" not in killed.stderr
    last = torch.load(tmp_path / "float-checkpoint-last.pth.tar", weights_only=True)
    assert last["global_step"] == 10 and last["meta"]["world_size"] == 2
    wrong = hat_cli("resume", spec, "--stage", "float", "--work-dir", tmp_path, "-q", env=env)
    assert wrong.returncode == 2
    assert "saved by 2 processes but this run has 1" in wrong.stderr
    resumed = hat_cli(
        "resume", spec, "--stage", "float", "--work-dir", tmp_path, "--nproc", "2", "-q", env=env
    )
    assert resumed.returncode == 0, resumed.stderr
    reference = states(runs["two"], "float")
    for name, tensor in states(tmp_path, "float").items():
        assert torch.equal(tensor, reference[name]), name


def test_the_launcher_removes_its_temporary_folders_after_success_and_failure(
    hat_cli, env, runs, tmp_path: Path
) -> None:
    assert not launcher_leftovers(env)  # after the runs that succeeded
    spec = spec_file(tmp_path, 32)
    failed = hat_cli(
        "train",
        spec,
        "--stage",
        "float",
        "--work-dir",
        tmp_path,
        "--nproc",
        "2",
        "-q",
        env={**env, "HAT_TEST_KILL_AT_STEP": "3", "HAT_TEST_KILL_RANK": "1"},
    )
    assert failed.returncode != 0, failed.stderr
    assert not launcher_leftovers(env)


@pytest.mark.parametrize("how", ["kill -TERM launcher", "Ctrl-C in a terminal"])
def test_a_signal_to_the_launcher_makes_the_workers_save_and_stop(
    env, tmp_path: Path, how: str
) -> None:
    spec = spec_file(tmp_path, 32)
    spec.write_text(spec.read_text().replace("num_steps: 30", "num_steps: 100000", 1))
    pids = tmp_path / "pids"
    pids.mkdir()
    environ = {k: v for k, v in os.environ.items() if k != plugins.LOAD_PLUGINS_ENV}
    launcher = subprocess.Popen(
        [
            *(sys.executable, "-m", "hatcli", "train", str(spec), "--stage", "float"),
            *("--work-dir", str(tmp_path), "--nproc", "2", "-q"),
        ],
        env={**environ, **env, "HAT_TEST_PID_DIR": str(pids)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )
    last = tmp_path / "float-checkpoint-last.pth.tar"
    try:
        deadline = time.monotonic() + 300
        while not (last.exists() and len(worker_pids(pids)) == 2):
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline, "no checkpoint in 5 minutes"
            time.sleep(0.1)
        if how == "kill -TERM launcher":  # reaches the launcher only
            signum = signal.SIGTERM
            os.kill(launcher.pid, signum)
        else:  # a terminal sends Ctrl-C to its foreground process group
            signum = signal.SIGINT
            os.killpg(launcher.pid, signum)
        _, stderr = launcher.communicate(timeout=120)
        assert all(gone(pid) for pid in worker_pids(pids))  # none outlives the launcher
    finally:  # whatever failed, leave no process behind
        for pid in [launcher.pid, *worker_pids(pids)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launcher.wait()
    assert launcher.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "again: stopping now" not in stderr, stderr
    stopped = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert len(stopped) == 1 and stderr.strip().endswith(stopped[0]), stderr
    found = re.fullmatch(
        rf"interrupted: stopped by {signum.name} after step (\d+); the last checkpoint holds it",
        stopped[0],
    )
    assert found, stopped
    assert torch.load(last, weights_only=True)["global_step"] == int(found.group(1))
    assert not launcher_leftovers(env)


def worker_pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in folder.glob("rank*")]


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (within a moment: an orphan is reaped by init)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_the_same_spec_runs_under_torchrun(hat_cli, env, runs, tmp_path: Path) -> None:
    spec = spec_file(tmp_path, 32)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            "-m",
            "hatcli",
            "train",
            str(spec),
            "--stage",
            "float",
            "--work-dir",
            str(tmp_path),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    reference = states(runs["two"], "float")
    for name, tensor in states(tmp_path, "float").items():
        # torchrun sets OMP_NUM_THREADS=1, which changes float summation order slightly.
        torch.testing.assert_close(tensor.float(), reference[name].float(), rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bad_launches_are_input_errors(hat_cli, env, tmp_path: Path) -> None:
    spec = spec_file(tmp_path, 32)
    zero = hat_cli("train", spec, "--stage", "float", "--nproc", "0", env=env)
    assert zero.returncode == 2 and "--nproc and --nnodes must be at least 1" in zero.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        taken = hat_cli(
            "train", spec, "--stage", "float", "--nproc", "2", "--master-port", port, env=env
        )
    assert taken.returncode == 2 and f"--master-port {port} is in use" in taken.stderr
    nccl = spec_file(tmp_path / "nccl", 32)
    nccl.write_text(nccl.read_text().replace("sync_bn: true", "backend: nccl"))
    result = hat_cli("train", nccl, "--stage", "float", "--work-dir", tmp_path / "w", env=env)
    if not torch.cuda.is_available():
        assert result.returncode == 2 and "needs CUDA GPUs" in result.stderr
    plain = spec_file(tmp_path / "plain", 32)
    plain.write_text(
        plain.read_text().replace(
            "{type: distributed_data_parallel_trainer, sync_bn: true}", "Trainer"
        )
    )
    result = hat_cli(
        "train",
        plain,
        "--stage",
        "float",
        "--work-dir",
        tmp_path / "w",
        "--nproc",
        "2",
        env=env,
    )
    assert result.returncode == 2 and "use trainer: distributed_data_parallel_trainer" in (
        result.stderr
    )
    assert result.stderr.count("error:") == 1  # once, not once per worker
    assert signal.SIGKILL  # (kills in these tests are real signals)


def test_a_collective_that_lost_its_peer_is_told_from_a_failure_of_its_own() -> None:
    from hatcli.engine.distributed import lost_a_peer

    gloo = "[/src/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error: Connection reset"
    assert lost_a_peer(RuntimeError(gloo))
    assert lost_a_peer(torch.distributed.DistBackendError("NCCL communicator was aborted"))
    assert not lost_a_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not lost_a_peer(ValueError(gloo))
