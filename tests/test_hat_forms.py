"""What a HAT user's first spec contains: HAT's forms accepted with HAT's meaning, or
refused with a hint that names hat's form."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hat_callbacks.checkpoint import Checkpoint
from torch import nn

import hatcli
from hatcli.engine.load_weights import load_weights
from hatcli.errors import CheckpointError, SpecError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = (ROOT / "examples" / "digits" / "spec.yaml").read_text()


def load(tmp_path: Path, text: str) -> hatcli.Spec:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return hatcli.load_spec(path)


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(SpecError) as caught:
        load(tmp_path, text)
    return str(caught.value)


def test_null_device_optimizer_and_data_loader_as_a_hat_int_trainer_writes_them(
    tmp_path: Path,
) -> None:
    text = EXAMPLE.replace("device: auto", "device: null").replace(
        "    num_epochs: 0  #",
        "    optimizer: null\n    lr_scheduler: null\n    data_loader: null\n"
        "    device: null\n    num_epochs: 0  #",
    )
    spec = load(tmp_path, text)
    assert spec.stage("int_infer").get("device") == "auto"
    assert spec.stage("float").get("device") == "auto"


def test_a_training_stage_with_a_null_optimizer_is_refused(tmp_path: Path) -> None:
    text = EXAMPLE.replace(
        "optimizer: {type: SGD, lr: 0.1, momentum: 0.9, weight_decay: 0.0005, nesterov: true}",
        "optimizer: null",
    )
    assert "stages.float: this stage trains but has no 'optimizer'" in problems(tmp_path, text)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "    trainer: Trainer\n    model: *model",
            "    trainer: Trainer\n    model: *model\n    data_loader: {type: Digits}",
            "stages.float.data_loader: unknown key 'data_loader'; hat calls it 'data'",
        ),
        (
            "    trainer: Trainer\n    model: *model",
            "    type: Trainer\n    model: *model",
            "stages.float.type: unknown key 'type'; a stage's trainer is 'trainer' in hat",
        ),
        (
            "{type: Checkpoint, name_prefix: float-, monitor_metric_key: accuracy, mode: max}",
            "{type: Checkpoint, name_prefix: float-, keep_n: 3}",
            "unknown key 'keep_n'; hat calls it 'max_keep'",
        ),
        (
            "{type: Checkpoint, name_prefix: float-, monitor_metric_key: accuracy, mode: max}",
            "{type: Checkpoint, name_prefix: float-, strict_match: true}",
            "unknown key 'strict_match'; hat's Checkpoint always loads strictly; remove it",
        ),
        (
            "      - {type: Validation, data: val}\n      - {type: Checkpoint, name_prefix: float-",
            "      - {type: Validation, data: val, val_interval: 2}\n"
            "      - {type: Checkpoint, name_prefix: float-",
            "unknown key 'val_interval'; hat calls it 'every' (with interval_by: epoch or step)",
        ),
    ],
    ids=["data_loader", "type", "keep_n", "strict_match", "val_interval"],
)
def test_hat_names_get_a_hint_naming_hats_form(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in EXAMPLE
    assert message in problems(tmp_path, EXAMPLE.replace(old, new))


class _Metrics:
    def metric_names(self) -> list[str]:
        return ["accuracy", "loss"]


def test_checkpoint_with_mode_and_no_key_monitors_the_validation_metric() -> None:
    checkpoint = Checkpoint(mode="max")
    checkpoint.check(SimpleNamespace(callbacks=[_Metrics(), checkpoint]))  # type: ignore[arg-type]
    assert checkpoint.monitor == "accuracy"
    plain = Checkpoint()
    plain.check(SimpleNamespace(callbacks=[_Metrics(), plain]))  # type: ignore[arg-type]
    assert plain.monitor is None  # no mode: best is the latest, as before
    alone = Checkpoint(mode="min")
    alone.check(SimpleNamespace(callbacks=[alone]))  # type: ignore[arg-type]
    assert alone.monitor is None  # no validation: best is the latest, as in HAT


def test_load_checkpoint_allow_miss_and_ignore_extra_relax_one_side_each() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("1.")}
    state["extra"] = torch.zeros(1)
    saved = {"state_dict": state}
    with pytest.raises(CheckpointError, match=r"missing 1\.weight, 1\.bias; unexpected extra"):
        load_weights(model, saved, "c.pth.tar")
    with pytest.raises(CheckpointError, match="unexpected extra"):
        load_weights(model, saved, "c.pth.tar", allow_missing=True)
    with pytest.raises(CheckpointError, match=r"missing 1\.weight"):
        load_weights(model, saved, "c.pth.tar", allow_unexpected=True)
    load_weights(model, saved, "c.pth.tar", allow_missing=True, allow_unexpected=True)


SELF_LOSS_PLUGIN = '''
import torch
import hatcli

class SelfLoss(torch.nn.Module):
    """Returns its losses in training, as HAT's detection models do."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def forward(self, x, y=None):
        logits = self.net(x)
        if self.training:
            ce = torch.nn.functional.cross_entropy(logits, y)
            return {"ce": ce, "l2": 1e-3 * self.net[1].weight.square().sum()}
        return logits

@hatcli.hookimpl
def hat_register_models(register):
    register("SelfLoss", SelfLoss, {"type": "object", "additionalProperties": False})
'''

SELF_LOSS_SPEC = """\
version: 1
name: self_loss
work_dir: WORK_DIR
model: {type: SelfLoss}
data:
  train: {type: Digits, split: train, batch_size: 64, shuffle: true}
  val: {type: Digits, split: val, batch_size: 512}
stages:
  float:
    batch_processor: PROCESSOR
    optimizer: {type: SGD, lr: 0.1}
    num_epochs: 2
    callbacks: [{type: Validation}]
"""


@pytest.mark.slow
def test_a_model_that_returns_its_losses_trains_with_model_returns_loss(
    plugin, tmp_path: Path
) -> None:
    import types

    from hatcli.engine.stage import run_stage

    module = types.ModuleType("self_loss_plugin")
    exec(SELF_LOSS_PLUGIN, module.__dict__)
    plugin(module, "self_loss_plugin")
    text = SELF_LOSS_SPEC.replace("WORK_DIR", str(tmp_path / "w"))
    spec = load(tmp_path, text.replace("PROCESSOR", "ModelReturnsLoss"))
    summary = run_stage(spec, "float")
    assert summary["metrics"]["accuracy"] > 0.8  # trained on the summed losses
    log = [json.loads(line) for line in (tmp_path / "w/float/metrics.jsonl").open()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert losses[-1] < losses[0]
    basic = load(tmp_path, text.replace("PROCESSOR", "BasicBatchProcessor"))
    with pytest.raises(TypeError):  # model(x) in training: no targets to compute losses
        run_stage(basic, "float")
