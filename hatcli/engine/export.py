"""Export a stage's model: ONNX (QDQ or integer ops for quantized models) or TorchScript,
then check it.

The model is built exactly as ``hat train`` builds the stage (its convert pipeline loads
the trained weights), put in eval mode and exported; the exported file is then run on the
stage's whole ``val`` split and compared with the model it came from.

ONNX of a quantized model is built from the integer model (for a QAT stage, its
``convert``) by recording one forward pass: ``onnx_qdq`` writes the QDQ form (float ops
between ``DequantizeLinear`` and ``QuantizeLinear``), ``onnx_integer`` the exact form
(``ConvInteger``/``MatMulInteger`` and hat's own requantization). The float model goes
through ``torch.onnx.export``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hatcli.engine.checkpoint_io import atomic_write_bytes, load_checkpoint
from hatcli.engine.load_weights import load_weights
from hatcli.engine.onnx_integer import IntegerOpsBuilder
from hatcli.engine.onnx_qdq import OPSET, QDQBuilder
from hatcli.engine.resume import checkpoint_callbacks
from hatcli.engine.stage import build_data_loader, build_model, seed_everything
from hatcli.errors import InputError, RunError, one_line
from hatcli.quant import convert
from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.spec.spec import Spec, StageSpec

FORMATS = ("onnx", "onnx-integer", "torchscript")
ONNX_HINT = "ONNX export needs onnx and onnxruntime: install hat[onnx] (pip install 'hat[onnx]')"


@dataclass
class Agreement:
    """How the exported model's outputs compare with one hat model's on the val split."""

    against: str  # which hat model
    elements: int
    max_abs_diff: float
    identical: float | None = None  # fraction of elements equal (on the output grid)
    max_diff_scales: float | None = None  # largest |difference| in output scales
    accuracy: float | None = None  # the hat model's own accuracy

    def line(self) -> str:
        parts = []
        if self.identical is not None:
            parts.append(
                f"{100 * self.identical:.3f}% of {self.elements} output elements identical"
            )
        if self.max_diff_scales is not None:
            parts.append(f"max difference {self.max_diff_scales:.3g} output scales")
        else:
            parts.append(f"max abs difference {self.max_abs_diff:.3g}")
        acc = "" if self.accuracy is None else f" (its accuracy {self.accuracy:.4f})"
        return f"agreement with the {self.against}{acc}: {', '.join(parts)}"


@dataclass
class ExportResult:
    """What ``export_stage`` wrote and measured."""

    stage: str
    format: str
    path: Path
    kind: str  # float | qat | integer
    weights: str | None = None  # the stage's own checkpoint, when it has one
    samples: int = 0
    accuracy: float | None = None  # of the exported model on the val split
    agreements: list[Agreement] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = f"[{self.stage}]"
        what = {"onnx": "ONNX", "onnx-integer": "ONNX (integer ops)"}.get(self.format, self.format)
        if self.format == "onnx" and self.kind != "float":
            what = "ONNX (QDQ int8)"
        out = [f"{head} exported the {self.kind} model as {what}: {self.path}"]
        if self.weights:
            out.append(f"{head} weights: {self.weights}")
        runner = "onnxruntime" if self.format.startswith("onnx") else "torch.jit.load"
        if self.accuracy is not None:
            out.append(
                f"{head} accuracy of the exported model ({runner}, {self.samples} val "
                f"samples): {self.accuracy:.4f}"
            )
        out.extend(f"{head} {a.line()}" for a in self.agreements)
        return out


def default_path(work_dir: Path, stage: str, fmt: str) -> Path:
    names = {"onnx": f"{stage}.onnx", "onnx-integer": f"{stage}-integer.onnx"}
    return work_dir / names.get(fmt, f"{stage}-exported.pt")


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or an InputError telling how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise InputError(ONNX_HINT) from None
    return onnx, onnxruntime


def stage_checkpoint(spec: Spec, stage: StageSpec) -> Path | None:
    """The checkpoint the stage's ``Checkpoint`` callback writes (``best``, else ``last``
    if ``best`` is not written or not there yet); ``None`` without such a callback."""
    for cb, folder in checkpoint_callbacks(spec, stage.name):
        paths = [
            folder / cb.file_name(stage.name, which)
            for which, wanted in (("best", cb.save_best), ("last", cb.save_last))
            if wanted
        ]
        return next((p for p in paths if p.exists()), paths[0] if paths else None)
    return None


def load_stage_checkpoint(spec: Spec, stage: StageSpec, model: nn.Module) -> str | None:
    """Put the weights the stage produced into ``model`` (built by the stage's pipeline).

    The pipeline's own ``LoadCheckpoint`` loads the stage's *input* (e.g. the calibrated
    weights for ``qat``); what a stage trained is in its ``Checkpoint`` callback's file.
    A stage that has not written it yet is a ``CheckpointError``.
    """
    path = stage_checkpoint(spec, stage)
    if path is None:
        return None
    load_weights(model, load_checkpoint(path), str(path))
    return str(path)


def _model_kind(model: nn.Module) -> str:
    mods = list(model.modules())
    if any(isinstance(m, IntegerModule) for m in mods):
        return "integer"
    if any(isinstance(m, FakeQuantize) for m in mods):
        return "qat"
    return "float"


def _named_paths(node: Any) -> list[Path]:
    """Every string in a spec node that names an existing file or folder."""
    if isinstance(node, dict):
        return [p for value in node.values() for p in _named_paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in _named_paths(value)]
    if isinstance(node, str) and node and "\n" not in node and len(node) < 4096:
        try:
            return [Path(node)] if Path(node).exists() else []
        except OSError:
            return []
    return []


def protected_paths(spec: Spec) -> tuple[set[Path], set[Path]]:
    """``(files, folders)`` an export must never replace: the spec, what it reads, and
    what hat wrote for its stages (checkpoints, logs)."""
    files = {spec.path.resolve()}
    folders = {(spec.work_dir / name).resolve() for name in spec.stage_names}
    for path in _named_paths(spec.data):
        (folders if path.is_dir() else files).add(path.resolve())
    folders.discard(spec.work_dir.resolve())  # exports go there by default
    for name in spec.stage_names:
        for cb, folder in checkpoint_callbacks(spec, name):
            files.update((folder / cb.file_name(name, w)).resolve() for w in ("last", "best"))
            if folder.is_dir():
                files.update(p.resolve() for p in cb.interval_files(folder, name))
    return files, folders


def check_output(spec: Spec, path: Path, force: bool) -> None:
    """Refuse an output that would replace an input or hat's own files, or any existing
    file without ``force``."""
    target = path.resolve()
    files, folders = protected_paths(spec)
    if target in files or target.name.endswith(".pth.tar"):
        raise InputError(
            f"--output {path}: refusing to write over a file this spec reads or hat's own "
            "checkpoint; choose another path"
        )
    inside = next((f for f in folders if target.is_relative_to(f)), None)
    if inside is not None:
        raise InputError(
            f"--output {path}: refusing to write inside {inside}, which this spec reads or "
            "where hat keeps a stage's records; choose another path"
        )
    if target.is_dir():
        raise InputError(f"--output {path} is a folder; give a file path")
    if target.exists() and not force:
        raise InputError(f"--output {path} exists; pass --force to replace it")


def export_stage(
    spec: Spec, stage: str, fmt: str, output: Path | None = None, *, force: bool = False
) -> ExportResult:
    """Export ``stage``'s model (weights from its convert pipeline) and check the file.

    The file is written atomically; an ``output`` that exists is replaced only with
    ``force``, and never when it is the spec, a file it reads, or a checkpoint."""
    if fmt not in FORMATS:
        raise InputError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    # The default path is hat's own file in work_dir: a new export replaces the last one.
    path = Path(output) if output is not None else default_path(spec.work_dir, stage, fmt)
    check_output(spec, path, force or output is None)
    if fmt.startswith("onnx"):
        require_onnx()
    stage_spec = spec.stage(stage)
    seed_everything(int(stage_spec.get("seed")))
    model = build_model(spec, stage_spec)
    source = load_stage_checkpoint(spec, stage_spec, model)
    model = model.to("cpu").eval()
    loader = build_data_loader(spec, "val", stage_spec)
    batches = [(x.float(), y) for x, y in loader]
    if not batches:
        raise InputError(f"the {stage!r} stage's 'val' data gives no batch to export with")
    example = batches[0][0][: min(2, len(batches[0][0]))]
    result = ExportResult(stage, fmt, path, _model_kind(model), weights=source)
    with torch.no_grad():
        if fmt == "torchscript":
            _export_torchscript(model, example, batches, result)
        else:
            _export_onnx(model, example, batches, result, integer_ops=fmt == "onnx-integer")
    return result


# --- TorchScript -----------------------------------------------------------------------


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, batches: list[Any], result: ExportResult
) -> None:
    with warnings.catch_warnings():
        # Tracing records the model's fixed scales and shapes, which is the intent.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as exc:
            raise InputError(f"torch.jit.trace failed: {one_line(exc)}") from None
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    loaded = torch.jit.load(io.BytesIO(buffer.getvalue()))
    refs, outs, targets = [], [], []
    for x, y in batches:
        refs.append(model(x))
        outs.append(loaded(x))
        targets.append(y)
    ref, out, target = torch.cat(refs), torch.cat(outs), torch.cat(targets)
    if not torch.equal(ref, out):
        raise RunError(f"the traced {result.stage} model does not give the model's outputs")
    result.samples, result.accuracy = len(target), _accuracy(out, target)
    result.agreements.append(_agreement(f"hat {result.kind} model", ref, out, target, None, True))
    atomic_write_bytes(result.path, buffer.getvalue())


# --- ONNX ------------------------------------------------------------------------------


def _export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    batches: list[Any],
    result: ExportResult,
    integer_ops: bool = False,
) -> None:
    onnx, ort = require_onnx()
    out_scale: tuple[torch.Tensor, int | None] | None = None
    integer = model
    if result.kind == "float" and integer_ops:
        raise InputError(
            f"--format onnx-integer needs a quantized stage; {result.stage!r} holds a float "
            "model (use --format onnx)"
        )
    if result.kind == "float":
        proto = _torch_onnx_export(model, example)
    else:
        if result.kind == "qat":
            try:
                integer = convert(model)
            except Exception as exc:
                raise InputError(f"the QAT model does not convert: {one_line(exc)}") from None
        builder = IntegerOpsBuilder if integer_ops else QDQBuilder
        proto, scales = builder(integer, onnx).build(example)
        out_scale = scales[0] if scales else None
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise RunError(f"onnx.checker rejects the exported graph: {one_line(exc)}") from None
    data = proto.SerializeToString()
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RunError(f"onnxruntime cannot load the exported graph: {one_line(exc)}") from None
    name = session.get_inputs()[0].name
    refs, ints, outs, targets = [], [], [], []
    for x, y in batches:
        refs.append(model(x))
        if integer is not model:
            ints.append(integer(x))
        outs.append(torch.from_numpy(session.run(None, {name: x.numpy()})[0]))
        targets.append(y)
    out, target = torch.cat(outs), torch.cat(targets)
    result.samples, result.accuracy = len(target), _accuracy(out, target)
    if ints:  # a QAT stage: the graph is its integer model; compare with both
        int_ref = torch.cat(ints)
        result.agreements.append(
            _agreement(
                "hat integer model (QAT2Quantize of it)",
                int_ref,
                out,
                target,
                out_scale,
                integer_ops,
            )
        )
    against = "hat QAT model" if ints else f"hat {result.kind} model"
    result.agreements.append(
        _agreement(against, torch.cat(refs), out, target, out_scale, integer_ops)
    )
    atomic_write_bytes(result.path, data)


def _torch_onnx_export(model: nn.Module, example: torch.Tensor) -> Any:
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        except Exception as exc:
            raise InputError(f"torch.onnx.export failed: {one_line(exc)}") from None
    return onnx.load_from_string(buffer.getvalue())


def _accuracy(out: torch.Tensor, targets: torch.Tensor) -> float | None:
    if out.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point():
        return float((out.argmax(1) == targets).double().mean())
    return None


def _agreement(
    against: str,
    ref: torch.Tensor,
    out: torch.Tensor,
    targets: torch.Tensor,
    scale: tuple[torch.Tensor, int | None] | None,
    exact: bool = False,
) -> Agreement:
    diff = (out.double() - ref.double()).abs()
    n = diff.numel()
    agree = Agreement(against, n, float(diff.max()) if n else 0.0)
    agree.accuracy = _accuracy(ref, targets)
    if exact:
        agree.identical = float((out == ref).double().mean()) if n else 1.0
    if scale is None:
        return agree
    s, axis = scale
    s = s.double().abs()
    if axis is not None:
        shape = [1] * diff.dim()
        shape[axis] = -1
        s = s.reshape(shape)
    in_scales = diff / s
    if not exact:
        # Identical: the same integer on the output grid (a float32 DequantizeLinear and
        # hat's float64 dequantization can differ in the last bit of the float value).
        agree.identical = float((in_scales < 0.5).double().mean()) if n else 1.0
    agree.max_diff_scales = float(in_scales.max()) if n else 0.0
    return agree
