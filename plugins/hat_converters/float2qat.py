"""Float2QAT: a float model -> its QAT model, in the stage's qat_mode.

Two ways, as HAT has: **eager** (the model implements ``fuse_model()`` and
``set_qconfig()``, and its modules are swapped for their QAT versions) and **graph**
(any PyTorch model: traced with torch.fx, fused and quantized op by op; see
``hatcli.quant.graph``). ``mode: auto`` (the default) takes eager for a model that has
both methods, graph for any other. The pipeline's ``qconfig`` section applies in both.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from hatcli.engine.build import located
from hatcli.engine.convert import ConvertContext
from hatcli.errors import InputError
from hatcli.quant import QuantizationError, prepare_qat
from hatcli.quant.graph import TraceFailure, prepare, records
from hatcli.quant.graph.report import eager_records
from hatcli.quant.qconfig_spec import QConfigSpec, QConfigSpecError

MODES = ("auto", "eager", "graph")


class Float2QAT:
    """HAT's order in eager mode: ``fuse_model()``, ``set_qconfig()``, the spec's qconfig
    rules, then the module swap; in graph mode, trace and prepare."""

    def __init__(self, mode: str = "auto", leaf_modules: Sequence[str] = ()) -> None:
        self.mode = mode
        self.leaf_modules = list(leaf_modules)

    def __call__(self, model: nn.Module, context: ConvertContext) -> nn.Module:
        name = type(model).__name__
        eager = all(callable(getattr(model, m, None)) for m in ("fuse_model", "set_qconfig"))
        if self.mode == "eager" and not eager:
            raise InputError(
                f"Float2QAT: mode eager: model {name} has no fuse_model() and set_qconfig(); "
                "leave mode out (auto) to prepare it by tracing"
            )
        spec = self._qconfig_spec(context)
        try:
            if self.mode == "eager" or (self.mode == "auto" and eager):
                qat_model = self._eager(model, context, spec)
                context.notes["quantization"] = ("eager", eager_records(qat_model, spec))
                return qat_model
            self._check_leaves(model, context)
            qat_model = prepare(model, context.qat_mode, self.leaf_modules, spec)
        except QConfigSpecError as exc:
            raise located(context.positions, (*context.qconfig_path, *exc.path), str(exc)) from None
        except TraceFailure as exc:
            hint = (
                f"; list it as a leaf to quantize it whole or keep it float: "
                f"Float2QAT: {{leaf_modules: [{exc.module}]}}"
                if exc.module
                else "; make the model's forward traceable (docs/quantizing-your-own-model.md)"
            )
            raise located(context.positions, context.path, f"Float2QAT: {exc}{hint}") from None
        except QuantizationError as exc:
            raise InputError(f"Float2QAT: model {name}: {exc}") from None
        context.notes["quantization"] = ("graph", records(qat_model))
        return qat_model

    def _qconfig_spec(self, context: ConvertContext) -> QConfigSpec:
        try:
            return QConfigSpec.parse(context.qconfig)
        except QConfigSpecError as exc:
            raise located(context.positions, (*context.qconfig_path, *exc.path), str(exc)) from None

    def _check_leaves(self, model: nn.Module, context: ConvertContext) -> None:
        names = {n for n, _ in model.named_modules()}
        for i, leaf in enumerate(self.leaf_modules):
            if leaf not in names:
                raise located(
                    context.positions,
                    (*context.path, "leaf_modules", i),
                    f"Float2QAT: model {type(model).__name__} has no module {leaf!r}",
                )

    def _eager(self, model: nn.Module, context: ConvertContext, spec: QConfigSpec) -> nn.Module:
        model.fuse_model()  # type: ignore[operator]
        model.set_qconfig()  # type: ignore[operator]
        if spec.default is not None and getattr(model, "qconfig", None) is None:
            model.qconfig = spec.default.qconfig  # type: ignore[assignment]
        names = []
        for module_name, module in model.named_modules():
            names.append(module_name)
            rule = spec.rule_for(module_name, [type(module).__name__]) if module_name else None
            if rule is not None:
                module.qconfig = rule.qconfig  # type: ignore[assignment]
        spec.check_all_used(names)
        return prepare_qat(model, context.qat_mode, inplace=True)


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "mode": {
            "enum": list(MODES),
            "default": "auto",
            "description": "eager: the model's fuse_model/set_qconfig; graph: trace it "
            "(torch.fx); auto: eager when the model has both methods.",
        },
        "leaf_modules": {
            "type": "array",
            "items": {"type": "string"},
            "default": [],
            "description": "Dotted module names not to trace into (code that cannot be "
            "traced): quantized whole by eager rules if they have fuse_model, else float.",
        },
    },
}
