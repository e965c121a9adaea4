"""Mixed precision and channels-last: float steps under torch.autocast (fp16 with a
GradScaler that checkpoints), QAT kept in float32 so it still matches the integer model,
and an integer model that gives the same integers in channels-last memory format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hatcli
from hatcli.engine.loop import Trainer
from hatcli.engine.resume import find_resume_point
from hatcli.engine.stage import build_context

HEADER = """\
version: 1
name: amp
seed: 1
model: {type: DigitsNet, width: 4}
data:
  train: {type: Digits, split: train, batch_size: 32, shuffle: true}
  val: {type: Digits, split: val, batch_size: 512}
stages:
"""
FLOAT = """\
  float:
    optimizer: {type: SGD, lr: 0.1}
    num_steps: 3
    device: cpu
    amp: AMP
    channels_last: CL
    callbacks: [{type: Checkpoint, name_prefix: float-}]
"""
QUANTIZED = """\
  calib:
    trainer: Calibrator
    model_convert_pipeline: {converters: [{type: Float2QAT}]}
    num_steps: 2
    device: cpu
    callbacks: [{type: Checkpoint, name_prefix: calib-}]
  qat:
    model_convert_pipeline:
      converters:
        - {type: Float2QAT}
        - {type: LoadCheckpoint, checkpoint_path: "{work_dir}/calib-checkpoint-last.pth.tar"}
    optimizer: {type: SGD, lr: 0.05}
    num_steps: 3
    device: cpu
    amp: AMP
    callbacks: [{type: Checkpoint, name_prefix: qat-}]
  int:
    model_convert_pipeline:
      converters:
        - {type: Float2QAT}
        - {type: LoadCheckpoint, checkpoint_path: "{work_dir}/calib-checkpoint-last.pth.tar"}
        - {type: QAT2Quantize}
    num_epochs: 0
    device: cpu
"""


def spec_of(tmp_path: Path, text: str, amp: str = "off", channels_last: bool = False) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        HEADER + text.replace("AMP", amp).replace("CL", "true" if channels_last else "false")
    )
    return spec


def run(spec: Path, stage: str, work: Path) -> dict[str, torch.Tensor]:
    hatcli.run_stage(hatcli.load_spec(spec, work_dir=work), stage)
    state: dict[str, torch.Tensor] = torch.load(
        work / f"{stage}-checkpoint-last.pth.tar", weights_only=True
    )
    return state


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_float_step_runs_under_autocast(tmp_path: Path, amp: str) -> None:
    spec = hatcli.load_spec(spec_of(tmp_path, FLOAT, amp), work_dir=tmp_path / "w")
    ctx = build_context(spec, "float")
    seen: list[torch.dtype] = []
    conv = next(m for m in ctx.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    Trainer().step(ctx, next(iter(ctx.data_loaders["train"])))
    assert seen == [torch.bfloat16 if amp == "bf16" else torch.float16]
    assert ctx.loss is not None and ctx.loss == ctx.loss  # finite, not NaN
    assert (ctx.grad_scaler is not None) == (amp == "fp16")


@pytest.mark.slow
def test_fp16_grad_scaler_is_checkpointed_and_restored(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, FLOAT, "fp16", channels_last=True)
    saved = run(spec, "float", tmp_path / "w")
    assert saved["grad_scaler"]["scale"] > 0  # type: ignore[index]
    point = find_resume_point(hatcli.load_spec(spec, work_dir=tmp_path / "w"), "float")
    ctx = build_context(hatcli.load_spec(spec, work_dir=tmp_path / "w"), "float", resume=point)
    assert ctx.grad_scaler.get_scale() == saved["grad_scaler"]["scale"]  # type: ignore[index]


@pytest.mark.slow
def test_qat_with_amp_trains_exactly_as_without_it(tmp_path: Path) -> None:
    results = {}
    for amp in ("off", "bf16"):
        (tmp_path / amp).mkdir()
        spec = spec_of(tmp_path / amp, QUANTIZED, amp)
        run(spec, "calib", tmp_path / amp / "w")
        results[amp] = run(spec, "qat", tmp_path / amp / "w")["state_dict"]
    for name, value in results["off"].items():  # type: ignore[union-attr]
        assert torch.equal(value, results["bf16"][name]), name  # type: ignore[index]


@pytest.mark.slow
def test_the_integer_model_is_exact_in_channels_last(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, QUANTIZED)
    run(spec, "calib", tmp_path / "w")
    loaded = hatcli.load_spec(spec, work_dir=tmp_path / "w")
    model = hatcli.build_model(loaded, "int").eval()
    inputs = next(iter(hatcli.build_data_loader(loaded, "val", "int")))[0]
    with torch.no_grad():
        plain = model(inputs)
        model = model.to(memory_format=torch.channels_last)
        last = model(inputs.to(memory_format=torch.channels_last))
    assert torch.equal(plain, last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_float_step_under_bf16_on_cuda(tmp_path: Path) -> None:
    text = FLOAT.replace("device: cpu", "device: cuda")
    spec = hatcli.load_spec(spec_of(tmp_path, text, "bf16", True), work_dir=tmp_path / "w")
    ctx = build_context(spec, "float")
    Trainer().step(ctx, [t.cuda() for t in next(iter(ctx.data_loaders["train"]))])
    assert ctx.loss is not None
