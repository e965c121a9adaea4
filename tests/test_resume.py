"""Resume that loses nothing: real `hat train` processes killed at chosen points, then
`hat resume`, end with exactly the weights of a run that was never interrupted."""

from __future__ import annotations

import json
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from plugin_site import write_plugin_site

import hatcli
from hatcli.engine.stage import build_context

KILL_PLUGIN = textwrap.dedent("""
    import os
    import signal

    import hatcli
    from hatcli.engine.callback import Callback

    def _env(name):
        return int(os.environ.get(name, "0"))

    if _env("HAT_TEST_KILL_IN_WRITE"):
        # SIGKILL inside the Nth checkpoint write: the temp file is written, not renamed.
        _real_replace, _writes = os.replace, [0]

        def _replace(src, dst):
            _writes[0] += 1
            if _writes[0] == _env("HAT_TEST_KILL_IN_WRITE"):
                os.kill(os.getpid(), signal.SIGKILL)
            return _real_replace(src, dst)

        os.replace = _replace

    if _env("HAT_TEST_SIGNAL_IN_VALIDATION"):
        # SIGTERM while the Nth validation batch of the run is evaluated.
        from hat_callbacks import validation

        _real_forward, _batches = validation.checked_forward, [0]

        def _checked_forward(*args, **kwargs):
            _batches[0] += 1
            if _batches[0] == _env("HAT_TEST_SIGNAL_IN_VALIDATION"):
                os.kill(os.getpid(), signal.SIGTERM)
            return _real_forward(*args, **kwargs)

        validation.checked_forward = _checked_forward

    class KillSwitch(Callback):
        def on_step_end(self, ctx):
            if ctx.global_step == _env("HAT_TEST_KILL_AT_STEP"):
                os.kill(os.getpid(), signal.SIGKILL)
            if ctx.global_step == _env("HAT_TEST_SIGNAL_AT_STEP"):
                for _ in range(_env("HAT_TEST_SIGNAL_COUNT") or 1):
                    os.kill(os.getpid(), _env("HAT_TEST_SIGNAL"))

    @hatcli.hookimpl
    def hat_register_callbacks(register):
        register("KillSwitch", KillSwitch, {"type": "object", "additionalProperties": False})
""")

FLOAT_STAGE = """\
  float:
    optimizer: {type: SGD, lr: 0.1, momentum: 0.9, weight_decay: 0.0005}
    lr_scheduler: {type: StepLR, step_size: 1, gamma: 0.7}
    num_epochs: 3
    callbacks:
      - {type: KillSwitch}
      - {type: Validation}
      - type: Checkpoint
        name_prefix: float-
        monitor_metric_key: accuracy
        interval_by: step
        save_interval: 10
        max_keep: 2
"""

QAT_STAGE = """\
  qat:
    model_convert_pipeline:
      qat_mode: MODE
      converters:
        - {type: LoadCheckpoint, checkpoint_path: 'FLOAT_CHECKPOINT'}
        - {type: Float2QAT}
    optimizer: {type: SGD, lr: 0.02, momentum: 0.9}
    lr_scheduler: {type: CosineAnnealingLR, interval: step}
    num_steps: 80
    callbacks:
      - {type: KillSwitch}
      FUSE_BN
      - {type: Validation, every: 30, interval_by: step}
      - type: Checkpoint
        name_prefix: qat-
        monitor_metric_key: accuracy
        interval_by: step
        save_interval: 10
        max_keep: 2
"""
FUSE_BN = "- {type: FuseBN, modules: [[stem], [block_conv1, block_conv2]], step_or_epoch: [25, 55]}"

HEADER = """\
version: 1
name: resume
seed: 3
model: {type: DigitsNet, width: 8}
data:
  train: {type: Digits, split: train, batch_size: 32, shuffle: true}
  val: {type: Digits, split: val, batch_size: 512}
stages:
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_plugin_site(tmp_path_factory.mktemp("site"), "hat_test_kill", KILL_PLUGIN)


def write_spec(folder: Path, stage_text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.yaml"
    spec.write_text(HEADER + stage_text)
    return spec


def qat_stage(mode: str, float_checkpoint: Path) -> str:
    """The QAT stage in ``mode``; ``MODE-graph`` prepares the model by tracing it."""
    mode, graph, _ = mode.partition("-graph")
    fuse = FUSE_BN if mode != "fuse_bn" else ""
    text = QAT_STAGE.replace("MODE", mode).replace("FLOAT_CHECKPOINT", str(float_checkpoint))
    if graph:
        text = text.replace("{type: Float2QAT}", "{type: Float2QAT, mode: graph}")
    return "\n".join(line for line in text.replace("FUSE_BN", fuse).splitlines() if line.strip())


def run(hat_cli, env: dict[str, str], *args: str | Path, **extra: str):
    return hat_cli(*args, "--quiet", env={**env, **extra})


def assert_same_final_state(reference: Path, resumed: Path) -> None:
    a = torch.load(reference, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), f"{name} differs"
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert a["best"] == b["best"] and a["metrics"] == b["metrics"]


def log_records(work_dir: Path) -> list[tuple[str, int, float | None]]:
    lines = (work_dir / "float" / "metrics.jsonl").read_text().splitlines()
    return [(r["event"], r["step"], r.get("loss")) for r in map(json.loads, lines)]


@pytest.fixture(scope="module")
def float_reference(hat_cli, plugin_env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("float_reference")
    spec = write_spec(work, FLOAT_STAGE)
    result = run(hat_cli, plugin_env, "train", spec, "--stage", "float", "--work-dir", work)
    assert result.returncode == 0, result.stderr
    return work


def kill_and_resume(
    hat_cli,
    env,
    folder: Path,
    stage_text: str,
    stage: str,
    between: Callable[[Path], None] = lambda last: None,
    **kill: str,
) -> Path:
    spec = write_spec(folder, stage_text)
    killed = run(hat_cli, env, "train", spec, "--stage", stage, "--work-dir", folder, **kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    between(folder / f"{stage}-checkpoint-last.pth.tar")
    resumed = run(hat_cli, env, "resume", spec, "--stage", stage, "--work-dir", folder)
    assert resumed.returncode == 0, resumed.stderr
    return folder / f"{stage}-checkpoint-last.pth.tar"


@pytest.mark.parametrize(
    "kill",
    [
        {"HAT_TEST_KILL_AT_STEP": "13"},  # mid-epoch, 3 steps after a checkpoint
        {"HAT_TEST_KILL_AT_STEP": "45"},  # the last step of epoch 1
        {"HAT_TEST_KILL_AT_STEP": "101"},  # epoch 3
        {"HAT_TEST_KILL_IN_WRITE": "7"},  # inside a checkpoint write (step 30)
    ],
    ids=["step13", "step45-epoch-end", "step101", "during-write"],
)
@pytest.mark.slow
def test_float_stage_killed_and_resumed_is_bit_exact(
    hat_cli, plugin_env, float_reference: Path, tmp_path: Path, kill: dict[str, str]
) -> None:
    resumed = kill_and_resume(hat_cli, plugin_env, tmp_path, FLOAT_STAGE, "float", **kill)
    assert_same_final_state(float_reference / "float-checkpoint-last.pth.tar", resumed)
    assert not list(tmp_path.glob(".*.hat-tmp"))  # a temp file left by the kill is cleaned up
    # The resumed run's log continues the killed one's: no half line, no step twice.
    assert log_records(tmp_path) == log_records(float_reference)


@pytest.mark.parametrize(
    ("mode", "kill"),
    [
        ("fuse_bn", {"HAT_TEST_KILL_AT_STEP": "33"}),
        ("with_bn", {"HAT_TEST_KILL_AT_STEP": "17"}),  # before FuseBN fires at 25 and 55
        ("with_bn", {"HAT_TEST_KILL_AT_STEP": "62"}),  # after both
        ("with_bn_reverse_fold", {"HAT_TEST_KILL_AT_STEP": "41"}),  # between them
        ("with_bn_reverse_fold", {"HAT_TEST_KILL_IN_WRITE": "8"}),  # writing step 60
        ("with_bn_reverse_fold-graph", {"HAT_TEST_KILL_AT_STEP": "41"}),  # traced model
    ],
    ids=[
        "fuse_bn-33",
        "with_bn-17",
        "with_bn-62",
        "reverse_fold-41",
        "reverse_fold-write",
        "graph-reverse_fold-41",
    ],
)
@pytest.mark.slow
def test_qat_stage_killed_and_resumed_is_bit_exact(
    hat_cli, plugin_env, float_reference: Path, tmp_path: Path, mode: str, kill: dict[str, str]
) -> None:
    stage = qat_stage(mode, float_reference / "float-checkpoint-best.pth.tar")
    reference = tmp_path / "reference"
    spec = write_spec(reference, stage)
    result = run(hat_cli, plugin_env, "train", spec, "--stage", "qat", "--work-dir", reference)
    assert result.returncode == 0, result.stderr
    resumed = kill_and_resume(hat_cli, plugin_env, tmp_path / "killed", stage, "qat", **kill)
    assert_same_final_state(reference / "qat-checkpoint-last.pth.tar", resumed)
    final = torch.load(resumed, weights_only=True)
    if mode != "fuse_bn":
        keys = final["state_dict"]
        absorbed = {k for k, v in keys.items() if k.endswith("._extra_state") and bool(v)}
        assert absorbed == {f"{m}._extra_state" for m in ("stem", "block_conv1", "block_conv2")}
        assert not any(
            k.startswith(("stem.bn.", "block_conv1.bn.", "block_conv2.bn.")) for k in keys
        )
        assert any(k.startswith("down.bn.") for k in keys)  # not named in FuseBN: kept
    assert any("activation_post_process.min_val" in k for k in final["state_dict"])


def as_saved_by_hat_0_1(checkpoint: Path) -> None:
    """Rewrite ``checkpoint`` as hat 0.1 wrote it: the absorbed BN in a top-level
    ``absorbed_bn`` list, and no extra state in the model's state dict."""
    state = torch.load(checkpoint, weights_only=True)
    weights = state["state_dict"]
    flags = {k.removesuffix("._extra_state"): bool(v) for k, v in weights.items() if "extra" in k}
    assert flags == {"stem": True, "block_conv1": False, "block_conv2": False, "down": False}
    state["state_dict"] = {k: v for k, v in weights.items() if not k.endswith("_extra_state")}
    state["absorbed_bn"] = [name for name, absorbed in flags.items() if absorbed]
    torch.save(state, checkpoint)


@pytest.mark.slow
def test_qat_checkpoint_of_hat_0_1_resumes_bit_exact(
    hat_cli, plugin_env, float_reference: Path, tmp_path: Path
) -> None:
    stage = qat_stage("with_bn", float_reference / "float-checkpoint-best.pth.tar")
    reference = tmp_path / "reference"
    spec = write_spec(reference, stage)
    result = run(hat_cli, plugin_env, "train", spec, "--stage", "qat", "--work-dir", reference)
    assert result.returncode == 0, result.stderr
    resumed = kill_and_resume(
        hat_cli,
        plugin_env,
        tmp_path / "killed",
        stage,
        "qat",
        between=as_saved_by_hat_0_1,  # killed at step 33: stem absorbed at 25
        HAT_TEST_KILL_AT_STEP="33",
    )
    assert_same_final_state(reference / "qat-checkpoint-last.pth.tar", resumed)
    assert "absorbed_bn" not in torch.load(resumed, weights_only=True)


@pytest.mark.slow
def test_sigterm_saves_the_step_and_exits_143_then_resume_is_exact(
    hat_cli, plugin_env, float_reference: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, FLOAT_STAGE)
    stopped = run(
        hat_cli,
        plugin_env,
        "train",
        spec,
        "--stage",
        "float",
        "--work-dir",
        tmp_path,
        HAT_TEST_SIGNAL_AT_STEP="57",
        HAT_TEST_SIGNAL=str(int(signal.SIGTERM)),
    )
    assert stopped.returncode == 143, stopped.stderr
    assert "stopped by SIGTERM after step 57" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    last = torch.load(tmp_path / "float-checkpoint-last.pth.tar", weights_only=True)
    assert last["global_step"] == 57 and last["step_in_epoch"] == 12 and not last["finished"]
    resumed = run(hat_cli, plugin_env, "resume", spec, "--stage", "float", "--work-dir", tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_final_state(
        float_reference / "float-checkpoint-last.pth.tar",
        tmp_path / "float-checkpoint-last.pth.tar",
    )


@pytest.mark.slow
def test_sigterm_during_validation_stops_it_and_resume_runs_it_first(
    hat_cli, plugin_env, tmp_path: Path
) -> None:
    header = HEADER.replace("split: val, batch_size: 512", "split: val, batch_size: 32")
    reference, folder = tmp_path / "reference", tmp_path / "stopped"
    for work in (reference, folder):
        work.mkdir()
        (work / "spec.yaml").write_text(header + FLOAT_STAGE)

    def train(work: Path, **extra: str):
        return run(hat_cli, plugin_env, "train", work / "spec.yaml", "--stage", "float",
                   "--work-dir", work, **extra)  # fmt: skip

    assert train(reference).returncode == 0
    # 12 batches a validation: the 15th is the 3rd of the one after epoch 2 (step 90).
    stopped = train(folder, HAT_TEST_SIGNAL_IN_VALIDATION="15")
    assert stopped.returncode == 143, stopped.stderr
    assert "stopped by SIGTERM after step 90" in stopped.stderr
    last = torch.load(folder / "float-checkpoint-last.pth.tar", weights_only=True)
    assert last["global_step"] == 90 and not last["finished"]
    assert {"owed": True} in last["callbacks"].values()  # the stopped validation
    assert [step for event, step, _ in log_records(folder) if event == "val"] == [45]
    resumed = run(hat_cli, plugin_env, "resume", folder / "spec.yaml", "--stage", "float",
                  "--work-dir", folder)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    for which in ("last", "best"):
        assert_same_final_state(
            reference / f"float-checkpoint-{which}.pth.tar",
            folder / f"float-checkpoint-{which}.pth.tar",
        )
    assert log_records(folder) == log_records(reference)


@pytest.mark.slow
def test_second_sigint_stops_at_once_without_damage(hat_cli, plugin_env, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, FLOAT_STAGE)
    stopped = run(
        hat_cli,
        plugin_env,
        "train",
        spec,
        "--stage",
        "float",
        "--work-dir",
        tmp_path,
        HAT_TEST_SIGNAL_AT_STEP="24",
        HAT_TEST_SIGNAL=str(int(signal.SIGINT)),
        HAT_TEST_SIGNAL_COUNT="2",
    )
    assert stopped.returncode == 130, stopped.stderr
    assert "SIGINT again: stopping now" in stopped.stderr
    last = torch.load(tmp_path / "float-checkpoint-last.pth.tar", weights_only=True)
    assert last["global_step"] == 20  # the step-24 save never happened; step 20's is intact


@pytest.mark.slow
def test_resume_a_finished_stage_does_nothing(hat_cli, plugin_env, float_reference: Path) -> None:
    before = (float_reference / "float-checkpoint-last.pth.tar").read_bytes()
    result = run(
        hat_cli,
        plugin_env,
        "resume",
        float_reference / "spec.yaml",
        "--stage",
        "float",
        "--work-dir",
        float_reference,
    )
    assert result.returncode == 0
    assert "already finished" in result.stderr
    assert (float_reference / "float-checkpoint-last.pth.tar").read_bytes() == before


@pytest.mark.slow
def test_damaged_last_checkpoint_falls_back_to_an_intact_one(
    hat_cli, plugin_env, float_reference: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, FLOAT_STAGE)
    killed = run(
        hat_cli,
        plugin_env,
        "train",
        spec,
        "--stage",
        "float",
        "--work-dir",
        tmp_path,
        HAT_TEST_KILL_AT_STEP="77",
    )
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "float-checkpoint-last.pth.tar"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in tensor data: torch.load would not notice
    last.write_bytes(bytes(data))
    result = run(hat_cli, plugin_env, "resume", spec, "--stage", "float", "--work-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "checksum mismatch" in result.stderr
    assert "float-checkpoint-step-0070.pth.tar" in result.stderr
    assert_same_final_state(float_reference / "float-checkpoint-last.pth.tar", last)


def resume_error(hat_cli, env, spec: Path, work: Path, *extra: str) -> str:
    result = run(
        hat_cli,
        env,
        "resume",
        spec,
        "--stage",
        extra[0] if extra else "float",
        "--work-dir",
        work,
        *extra[1:],
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
def test_resume_refuses_what_cannot_continue(
    hat_cli, plugin_env, float_reference: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, FLOAT_STAGE)
    assert "nothing to resume for stage 'float'" in resume_error(
        hat_cli, plugin_env, spec, tmp_path
    )
    other_model = write_spec(tmp_path / "wider", FLOAT_STAGE)
    other_model.write_text(other_model.read_text().replace("width: 8", "width: 16"))
    message = resume_error(
        hat_cli,
        plugin_env,
        other_model,
        tmp_path,
        "float",
        "--from",
        str(float_reference / "float-checkpoint-step-0130.pth.tar"),
    )
    assert "does not fit the model (DigitsNet)" in message and "shape mismatch" in message
    qat = write_spec(
        tmp_path / "qat", qat_stage("with_bn", float_reference / "float-checkpoint-best.pth.tar")
    )
    message = resume_error(
        hat_cli,
        plugin_env,
        qat,
        tmp_path,
        "qat",
        "--from",
        str(float_reference / "float-checkpoint-step-0130.pth.tar"),
    )
    assert "saved by stage 'float', not 'qat'" in message


@pytest.mark.slow
def test_the_three_resume_uses_of_the_seed(float_reference: Path, tmp_path: Path) -> None:
    saved = torch.load(float_reference / "float-checkpoint-step-0130.pth.tar", weights_only=True)
    base = (
        HEADER
        + FLOAT_STAGE.replace("      - {type: KillSwitch}\n", "")
        + "    model_convert_pipeline:\n      converters:\n"
        + f"        - {{type: LoadCheckpoint, checkpoint_path: '{float_reference}/"
        + "float-checkpoint-step-0130.pth.tar'}\n"
    )

    def context(flags: str):
        path = tmp_path / "spec.yaml"
        path.write_text(base + flags)
        return build_context(hatcli.load_spec(path, work_dir=tmp_path / "w"), "float")

    full = context("    resume_optimizer: true\n    resume_epoch_or_step: true\n")
    assert (full.epoch, full.global_step, full.step_in_epoch) == (2, 130, 40)
    assert full.lr == pytest.approx(saved["optimizer"]["param_groups"][0]["lr"])
    (checkpoint,) = [cb for cb in full.callbacks if type(cb).__name__ == "Checkpoint"]
    assert checkpoint.best == saved["best"]["value"]  # Checkpoint keeps its best

    finetune = context("    resume_optimizer: true\n    resume_epoch_or_step: false\n")
    assert (finetune.epoch, finetune.global_step, finetune.step_in_epoch) == (0, 0, 0)
    # The old schedule had decayed the LR; a fine-tune starts its own schedule again.
    assert saved["optimizer"]["param_groups"][0]["lr"] < 0.1
    assert finetune.lr == 0.1 and finetune.optimizer.param_groups[0]["initial_lr"] == 0.1
    finetune.lr_scheduler.step()
    assert finetune.lr == pytest.approx(0.07)  # StepLR(gamma=0.7) from the stage's own lr
    momentum = next(iter(finetune.optimizer.state.values()))["momentum_buffer"]
    assert torch.equal(momentum, saved["optimizer"]["state"][0]["momentum_buffer"])

    weights = context("    resume_optimizer: false\n    resume_epoch_or_step: false\n")
    assert (weights.epoch, weights.global_step) == (0, 0)
    assert weights.lr == pytest.approx(0.1) and not weights.optimizer.state
    for name, tensor in weights.model.state_dict().items():
        assert torch.equal(tensor, saved["state_dict"][name])
