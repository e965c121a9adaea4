"""float -> calibration -> qat -> int_infer on the bundled example (`hat train --stage all`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from plugin_site import write_plugin_site

import hatcli
from hatcli.quant import FakeQuantize, float_simulation
from hatcli.quant.nn.quantized.base import IntegerModule

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits" / "spec.yaml"


@pytest.fixture(scope="module")
def pipeline(hat_cli, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work_dir = tmp_path_factory.mktemp("pipeline")
    result = hat_cli("train", EXAMPLE, "--stage", "all", "--work-dir", work_dir, "--quiet")
    assert result.returncode == 0, result.stderr
    return work_dir


def summary(work_dir: Path, stage: str) -> dict:
    return json.loads((work_dir / stage / "summary.json").read_text())


@pytest.mark.slow
def test_every_stage_ran_and_quantized_accuracy_stays_within_half_a_point(pipeline: Path) -> None:
    accuracy = {
        s: summary(pipeline, s)["metrics"]["accuracy"] for s in ("float", "qat", "int_infer")
    }
    assert accuracy["float"] >= 0.95
    assert abs(accuracy["qat"] - accuracy["float"]) <= 0.005
    assert abs(accuracy["int_infer"] - accuracy["float"]) <= 0.005
    assert summary(pipeline, "calibration")["steps"] == 20
    assert summary(pipeline, "int_infer")["steps"] == 0


@pytest.mark.slow
def test_integer_checkpoint_and_model_are_integer(pipeline: Path) -> None:
    spec = hatcli.load_spec(EXAMPLE, work_dir=pipeline)
    model = hatcli.build_model(spec, "int_infer")
    assert any(isinstance(m, IntegerModule) for m in model.modules())
    saved = torch.load(pipeline / "int_infer-checkpoint-last.pth.tar", weights_only=True)
    assert saved["meta"]["stage"] == "int_infer" and saved["meta"]["qat_mode"] == "fuse_bn"
    assert any(t.dtype == torch.int8 for t in saved["state_dict"].values())


@pytest.mark.slow
def test_calibration_sets_observers_without_touching_weights(pipeline: Path) -> None:
    spec = hatcli.load_spec(EXAMPLE, work_dir=pipeline)
    before = hatcli.build_model(spec, "calibration")  # float weights + fresh observers
    after = torch.load(pipeline / "calibration-checkpoint-last.pth.tar", weights_only=True)
    state = after["state_dict"]
    for name, tensor in before.state_dict().items():
        if "activation_post_process" in name or "fake_quant" in name:
            continue
        assert torch.equal(tensor, state[name]), name  # weights and BN statistics unchanged
    observed = [k for k in state if k.endswith("activation_post_process.min_val")]
    assert observed and all(torch.isfinite(state[k]).all() for k in observed)
    fresh = [m for m in before.modules() if isinstance(m, FakeQuantize)]
    assert fresh and not any(fq.activation_post_process.initialized for fq in fresh)


@pytest.mark.slow
def test_traced_integer_model_runs_without_hat_and_matches(pipeline: Path, tmp_path: Path) -> None:
    spec = hatcli.load_spec(EXAMPLE, work_dir=pipeline)
    model = hatcli.build_model(spec, "int_infer").eval()
    inputs = torch.cat([x for x, _ in hatcli.build_data_loader(spec, "val")])
    with torch.no_grad():
        expected = model(inputs)
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import sys
        for name in ("hatcli", "hat_models", "hat_datasets", "hat_callbacks"):
            sys.modules[name] = None  # any import of hat fails
        import torch
        model = torch.jit.load({str(pipeline / "int_infer-traced.pt")!r})
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        torch.save(model(inputs), {str(tmp_path / "out.pt")!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def stage_spec(tmp_path: Path, pipeline: Path, stage_text: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(EXAMPLE.read_text() + textwrap.indent(textwrap.dedent(stage_text), "  "))
    return spec


@pytest.mark.slow
def test_save_traced_works_for_the_float_stage(hat_cli, pipeline: Path, tmp_path: Path) -> None:
    spec = stage_spec(
        tmp_path,
        pipeline,
        f"""\
        export_float:
          model_convert_pipeline:
            converters:
              - type: LoadCheckpoint
                checkpoint_path: '{pipeline}/float-checkpoint-best.pth.tar'
          num_epochs: 0
          callbacks: [{{type: SaveTraced, save_dir: '{tmp_path}', input_shape: [2, 1, 8, 8]}}]
        """,
    )
    result = hat_cli("train", spec, "--stage", "export_float", "--work-dir", tmp_path / "w", "-q")
    assert result.returncode == 0, result.stderr
    traced = torch.jit.load(tmp_path / "export_float-traced.pt")
    model = hatcli.build_model(hatcli.load_spec(spec, work_dir=pipeline), "export_float").eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


@pytest.mark.parametrize(
    ("stage_text", "fragment"),
    [
        (
            """\
            bad_order:
              model_convert_pipeline:
                converters:
                  - {type: Float2QAT}
                  - type: LoadCheckpoint
                    checkpoint_path: '{work_dir}/float-checkpoint-best.pth.tar'
              num_epochs: 0
            """,
            "does not fit the model (DigitsNet) as the pipeline has built it so far",
        ),
        (
            """\
            int_train:
              model_convert_pipeline:
                converters:
                  - {type: Float2QAT}
                  - type: LoadCheckpoint
                    checkpoint_path: '{work_dir}/qat-checkpoint-best.pth.tar'
                  - {type: QAT2Quantize}
              optimizer: {type: SGD, lr: 0.1}
              num_epochs: 1
            """,
            "the integer model (after QAT2Quantize) cannot train",
        ),
        (
            """\
            fuse_in_fuse_bn:
              model_convert_pipeline:
                converters: [{type: Float2QAT}]
              optimizer: {type: SGD, lr: 0.1}
              num_epochs: 1
              callbacks: [{type: FuseBN, modules: [[stem]], step_or_epoch: [1]}]
            """,
            "FuseBN needs qat_mode with_bn or with_bn_reverse_fold",
        ),
        (
            """\
            fuse_unknown:
              model_convert_pipeline:
                qat_mode: with_bn
                converters: [{type: Float2QAT}]
              optimizer: {type: SGD, lr: 0.1}
              num_epochs: 1
              callbacks: [{type: FuseBN, modules: [[stme]], step_or_epoch: [1]}]
            """,
            "no sub-module 'stme'; did you mean 'stem'?",
        ),
        (
            """\
            fuse_no_bn:
              model_convert_pipeline:
                qat_mode: with_bn
                converters: [{type: Float2QAT}]
              optimizer: {type: SGD, lr: 0.1}
              num_epochs: 1
              callbacks: [{type: FuseBN, modules: [[pool]], step_or_epoch: [1]}]
            """,
            "'pool' (AdaptiveAvgPool2d) holds no BN to absorb",
        ),
    ],
    ids=[
        "checkpoint-before-its-shape",
        "integer-training",
        "fusebn-under-fuse_bn",
        "fusebn-name",
        "fusebn-no-bn",
    ],
)
@pytest.mark.slow
def test_pipeline_mistakes_are_one_line_input_errors(
    hat_cli, pipeline: Path, tmp_path: Path, stage_text: str, fragment: str
) -> None:
    spec = stage_spec(tmp_path, pipeline, stage_text)
    stage = stage_text.split(":")[0].strip()
    result = hat_cli("train", spec, "--stage", stage, "--work-dir", pipeline, "-q")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert fragment in result.stderr


@pytest.mark.slow
def test_a_plain_model_is_prepared_by_tracing(hat_cli, tmp_path: Path) -> None:
    """No fuse_model, no set_qconfig: Float2QAT traces it; ``mode: eager`` refuses it."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        EXAMPLE.read_text().replace(
            "{type: DigitsNet, num_classes: 10, width: 16}", "{type: NoFuse}"
        )
    )
    env = write_plugin_site(
        tmp_path / "site",
        "nofuse",
        textwrap.dedent("""
            import torch
            import hatcli

            class NoFuse(torch.nn.Sequential):
                def __init__(self):
                    super().__init__(torch.nn.Flatten(), torch.nn.Linear(64, 10))

            @hatcli.hookimpl
            def hat_register_models(register):
                register("NoFuse", NoFuse, {"type": "object", "additionalProperties": False})
        """),
    )
    work = tmp_path / "w"
    train = hat_cli("train", spec, "--stage", "float", "--work-dir", work, "-q", env=env)
    assert train.returncode == 0, train.stderr
    result = hat_cli("train", spec, "--stage", "calibration", "--work-dir", work, "-v", env=env)
    assert result.returncode == 0, result.stderr
    assert "Float2QAT (graph): 1 dequantize, 1 int32 out, 1 quantize" in result.stderr
    assert re.search(r"^1 +Linear +int32 out +default int32 out", result.stderr, re.M)  # -v
    report = json.loads((work / "calibration" / "quantization.json").read_text())
    assert report["preparation"] == "graph" and report["float_islands"] == []
    assert [op["name"] for op in report["ops"]] == ["0_quant", "1", "1_dequant"]
    spec.write_text(spec.read_text().replace("{type: Float2QAT}", "{type: Float2QAT, mode: eager}"))
    eager = hat_cli("train", spec, "--stage", "calibration", "--work-dir", work, env=env)
    assert eager.returncode == 2
    assert "Float2QAT: mode eager: model NoFuse has no fuse_model() and set_qconfig()" in (
        eager.stderr
    )


NESTED_PLUGIN = """
import torch
import hatcli
from hatcli.nn import ConvBNReLU2d
from hatcli.quant import DeQuantStub, QuantStub, qconfig_manager

class Nested(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.features = torch.nn.Sequential(ConvBNReLU2d(1, 8, 3, padding=1),
                                            ConvBNReLU2d(8, 8, 3, padding=1))
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10))
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.head(self.features(self.quant(x))))

    def fuse_model(self):
        for block in self.features:
            block.fuse_model()

    def set_qconfig(self):
        self.qconfig = qconfig_manager.get_default_qat_qconfig()
        self.head.qconfig = qconfig_manager.get_default_qat_out_qconfig()

class Conv1dNet(Nested):
    def __init__(self):
        super().__init__()
        self.odd = torch.nn.Conv1d(1, 1, 1)

@hatcli.hookimpl
def hat_register_models(register):
    register("Nested", Nested, {"type": "object", "additionalProperties": False})
    register("Conv1dNet", Conv1dNet, {"type": "object", "additionalProperties": False})
"""

NESTED_SPEC = """\
version: 1
name: nested
model: {type: MODEL}
data:
  train: {type: Digits, split: train, batch_size: 64, shuffle: true}
  val: {type: Digits, split: val, batch_size: 512}
stages:
  qat:
    model_convert_pipeline:
      qat_mode: with_bn_reverse_fold
      converters: [{type: Float2QAT}]
    optimizer: {type: SGD, lr: 0.05, momentum: 0.9}
    num_steps: 12
    callbacks:
      - {type: FuseBN, modules: [[features.0], [features.1]], step_or_epoch: [4, 8]}
      - {type: Validation}
"""


@pytest.mark.slow
def test_fuse_bn_absorbs_dotted_modules_and_the_optimizer_trains_them(
    plugin, tmp_path: Path
) -> None:
    import types

    from hatcli.engine.loop import Trainer
    from hatcli.engine.stage import build_context

    module = types.ModuleType("nested_plugin")
    exec(NESTED_PLUGIN, module.__dict__)
    plugin(module, "nested_plugin")
    path = tmp_path / "spec.yaml"
    path.write_text(NESTED_SPEC.replace("MODEL", "Nested"))
    ctx = build_context(hatcli.load_spec(path, work_dir=tmp_path / "w"), "qat")
    Trainer().fit(ctx)
    absorbed = [
        r["module"]
        for r in map(json.loads, (tmp_path / "w/qat/metrics.jsonl").open())
        if r["event"] == "fuse_bn"
    ]
    assert absorbed == ["features.0", "features.1"]
    assert not any(".bn." in key for key in ctx.model.state_dict())
    trainable = {id(p) for p in ctx.model.parameters() if p.requires_grad}
    in_optimizer = {id(p) for group in ctx.optimizer.param_groups for p in group["params"]}
    assert trainable == in_optimizer  # no stale BN parameters, no orphaned conv weights
    conv = ctx.model.features[1].conv
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert ctx.metrics["accuracy"] > 0.2


def test_op_without_a_qat_version_is_named(plugin, tmp_path: Path) -> None:
    import types

    module = types.ModuleType("nested_plugin")
    exec(NESTED_PLUGIN, module.__dict__)
    plugin(module, "nested_plugin")
    path = tmp_path / "spec.yaml"
    path.write_text(NESTED_SPEC.replace("MODEL", "Conv1dNet"))
    with pytest.raises(hatcli.InputError, match=r"Float2QAT: model Conv1dNet: odd: Conv1d holds"):
        hatcli.build_model(hatcli.load_spec(path), "qat")


@pytest.mark.slow
def test_integer_checkpoint_loads_into_an_integer_pipeline(
    hat_cli, pipeline: Path, tmp_path: Path
) -> None:
    spec = stage_spec(
        tmp_path,
        pipeline,
        """\
        reload_int:
          model_convert_pipeline:
            converters:
              - {type: Float2QAT}
              - {type: QAT2Quantize}
              - type: LoadCheckpoint
                checkpoint_path: '{work_dir}/int_infer-checkpoint-last.pth.tar'
          num_epochs: 0
          callbacks: [{type: Validation}]
        """,
    )
    result = hat_cli("train", spec, "--stage", "reload_int", "--work-dir", pipeline, "-q")
    assert result.returncode == 0, result.stderr
    assert summary(pipeline, "reload_int")["metrics"] == summary(pipeline, "int_infer")["metrics"]


@pytest.fixture(scope="module")
def pipelines(hat_cli, pipeline: Path, tmp_path_factory: pytest.TempPathFactory):
    """The example's whole pipeline in ``mode`` (its spec with only qat_mode changed)."""
    done = {"fuse_bn": pipeline}

    def run(mode: str) -> tuple[Path, Path]:
        folder = tmp_path_factory.mktemp(mode)
        spec = folder / "spec.yaml"
        text = EXAMPLE.read_text()
        assert "&qat_mode fuse_bn" in text
        spec.write_text(text.replace("&qat_mode fuse_bn", f"&qat_mode {mode}"))
        if mode not in done:
            args = ("train", spec, "--stage", "all", "--work-dir", folder / "w", "-q")
            result = hat_cli(*args)
            assert result.returncode == 0, result.stderr
            done[mode] = folder / "w"
        return spec, done[mode]

    return run


def _qat_and_integer(spec_path: Path, work_dir: Path) -> tuple[torch.nn.Module, ...]:
    spec = hatcli.load_spec(spec_path, work_dir=work_dir)
    qat = hatcli.build_model(spec, "qat")
    best = torch.load(work_dir / "qat-checkpoint-best.pth.tar", weights_only=True)
    qat.load_state_dict(best["state_dict"])
    integer = hatcli.build_model(spec, "int_infer")
    inputs = torch.cat([x for x, _ in hatcli.build_data_loader(spec, "val")])
    return qat.eval(), integer.eval(), inputs


@pytest.mark.parametrize("mode", ["fuse_bn", "with_bn", "with_bn_reverse_fold"])
@pytest.mark.slow
def test_qat_eval_is_the_integer_model_on_the_examples_validation_set(pipelines, mode) -> None:
    """QAT eval computes with each layer's integer twin: on the whole validation set its
    outputs are the integer model's, bit for bit (the seed asks for >= 99.9% within one
    output scale), and both stages report the same accuracy."""
    spec, work_dir = pipelines(mode)
    qat, integer, inputs = _qat_and_integer(spec, work_dir)
    with torch.no_grad():
        qat_out, int_out = qat(inputs), integer(inputs)
        again = torch.cat([integer(inputs[:1]), integer(inputs[1:100]), integer(inputs[100:])])
    assert qat_out.dtype == int_out.dtype == torch.float32
    assert torch.equal(qat_out, int_out)
    assert torch.equal(again, int_out)  # and identical across batch sizes
    assert summary(work_dir, "qat")["qat_mode"] == mode
    log = [json.loads(line) for line in (work_dir / "qat" / "metrics.jsonl").open()]
    best_qat = max(e["accuracy"] for e in log if e["event"] == "val")
    assert summary(work_dir, "int_infer")["metrics"]["accuracy"] == best_qat
    assert abs(best_qat - summary(work_dir, "float")["metrics"]["accuracy"]) <= 0.005


@pytest.mark.slow
def test_the_training_forward_tracks_each_integer_layer_on_the_example(pipeline: Path) -> None:
    """The float simulation QAT trains with (what eval computes under
    ``float_simulation()``), op by op on the whole validation set: every quantized layer
    is within one step of its integer output and almost always identical (float32 can land
    on the other side of a rounding boundary); the predicted classes are identical."""
    qat, integer, inputs = _qat_and_integer(EXAMPLE, pipeline)
    layers = ["quant", "stem", "block_conv1", "block_conv2", "down", "pool"]
    seen: dict[str, dict[str, torch.Tensor]] = {"qat": {}, "int": {}}
    for name in layers:
        for key, model in (("qat", qat), ("int", integer)):
            getattr(model, name).register_forward_hook(
                lambda m, a, out, key=key, name=name: seen[key].__setitem__(name, out)
            )
    with torch.no_grad(), float_simulation():
        qat_out, int_out = qat(inputs), integer(inputs)
    for name in layers:
        steps = seen["int"][name].int_repr().float()
        qat_steps = torch.round(
            seen["qat"][name].as_subclass(torch.Tensor) / seen["int"][name].q_scale
        )
        diff = (qat_steps - steps).abs()
        assert diff.max() <= 1, name
        assert (diff == 0).float().mean() >= 0.999, name
    assert torch.equal(qat_out.argmax(1), int_out.argmax(1))
