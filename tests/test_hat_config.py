"""The HAT page's config, translated by docs/migration-from-hat.md into
examples/hat_config/spec.yaml, runs: float, qat (fuse_bn), qat with BN absorbed step by
step (with_bn_reverse_fold + FuseBN), int_infer, and the page's three resume uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hatcli
from hatcli.engine.stage import build_context, run_stage

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "hat_config" / "spec.yaml"

# The page's three resume uses, each a float stage that loads a checkpoint (HAT:
# LoadCheckpoint in the float_trainer's pipeline) with its two flags.
RESUME_STAGE = """
  float_again:
    trainer: distributed_data_parallel_trainer
    model_convert_pipeline:
      converters:
        - {type: LoadCheckpoint, checkpoint_path: "{work_dir}/float-checkpoint-last.pth.tar"}
    optimizer: {type: SGD, lr: 0.1, momentum: 0.9, weight_decay: 0.0005, nesterov: true}
    lr_scheduler: {type: CosineAnnealingLR}
    num_epochs: NUM_EPOCHS
    FLAGS
    callbacks: [*val_callback, *ckpt_callback]
"""


@pytest.fixture(scope="module")
def translated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The translated spec with fewer epochs, run with ``--stage all``."""
    folder = tmp_path_factory.mktemp("hat_config")
    text = SPEC.read_text().replace("num_epochs: 6", "num_epochs: 2")
    text = text.replace(
        "num_epochs: 2\n    callbacks:\n      - *val_callback",
        "num_epochs: 1\n    callbacks:\n      - *val_callback",
    )
    spec = folder / "spec.yaml"
    spec.write_text(text)
    work = folder / "runs"
    loaded = hatcli.load_spec(spec, work_dir=work)
    for stage in loaded.stage_names:
        run_stage(loaded, stage)
    return spec, work


def summary(work: Path, stage: str) -> dict:  # type: ignore[type-arg]
    return json.loads((work / stage / "summary.json").read_text())


@pytest.mark.slow
def test_every_stage_of_the_translation_runs(translated: tuple[Path, Path]) -> None:
    _, work = translated
    for stage in ("float", "qat", "qat_bn", "int_infer"):
        assert summary(work, stage)["finished"], stage
    # The integer model measures what QAT validation measured, bit for bit.
    assert summary(work, "int_infer")["metrics"] == summary(work, "qat")["metrics"]
    assert summary(work, "float")["metrics"]["accuracy"] > 0.9
    assert (work / "int_infer-traced.pt").is_file()  # HAT's trace_callback
    # "mode: max" and no key: best is judged on the validation metric, as in HAT.
    best = torch.load(work / "qat-checkpoint-best.pth.tar", weights_only=True)["best"]
    assert best["metric"] == "accuracy" and best["mode"] == "max"
    # FuseBN absorbed the named blocks' BN during QAT; the rest stayed.
    state = torch.load(work / "qat_bn-checkpoint-last.pth.tar", weights_only=True)["state_dict"]
    absorbed = {
        k.removesuffix("._extra_state")
        for k, v in state.items()
        if k.endswith("._extra_state") and bool(v)
    }
    assert absorbed == {"stem", "block_conv1", "block_conv2"}


def _resume_context(spec: Path, work: Path, flags: str, epochs: int = 3):  # type: ignore[no-untyped-def]
    text = spec.read_text() + RESUME_STAGE.replace("FLAGS", flags).replace(
        "NUM_EPOCHS", str(epochs)
    )
    again = spec.with_name("again.yaml")
    again.write_text(text)
    loaded = hatcli.load_spec(again, work_dir=work)
    return loaded, build_context(loaded, "float_again")


@pytest.mark.slow
def test_the_three_resume_uses_of_the_page(translated: tuple[Path, Path]) -> None:
    spec, work = translated
    saved = torch.load(work / "float-checkpoint-last.pth.tar", weights_only=True)
    steps = saved["global_step"]

    # Full resume: everything continues (HAT: resume_optimizer and resume_epoch_or_step).
    _, full = _resume_context(spec, work, "resume_optimizer: true\n    resume_epoch_or_step: true")
    assert (full.epoch, full.global_step) == (saved["epoch"], steps)

    # Optimizer only, for a fine-tune: epoch and step restart, the schedule restarts too.
    loaded, finetune = _resume_context(
        spec, work, "resume_optimizer: true\n    resume_epoch_or_step: false", epochs=1
    )
    assert (finetune.epoch, finetune.global_step) == (0, 0)
    assert finetune.lr == pytest.approx(0.1)
    momentum = next(iter(finetune.optimizer.state.values()))["momentum_buffer"]
    assert torch.equal(momentum, saved["optimizer"]["state"][0]["momentum_buffer"])
    run_stage(loaded, "float_again")
    tuned = torch.load(work / "float_again-checkpoint-last.pth.tar", weights_only=True)
    changed = [
        k
        for k, v in tuned["state_dict"].items()
        if v.is_floating_point() and not torch.equal(v, saved["state_dict"][k])
    ]
    assert changed  # it trained: the learning rate was not 0

    # Weights only: nothing else comes back.
    _, weights = _resume_context(
        spec, work, "resume_optimizer: false\n    resume_epoch_or_step: false"
    )
    assert (weights.epoch, weights.global_step) == (0, 0) and not weights.optimizer.state
    for name, tensor in weights.model.state_dict().items():
        assert torch.equal(tensor, saved["state_dict"][name])
