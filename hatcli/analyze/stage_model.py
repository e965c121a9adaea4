"""The model ``hat analyze`` measures: the stage's QAT model, built by its convert
pipeline, with the weights the stage produced.

For a stage whose pipeline ends in ``QAT2Quantize`` (``int_infer``), the pipeline's
steps before it build the QAT model (loading the QAT checkpoint as they do), and the
integer model is ``convert`` of that model: what ``QAT2Quantize`` itself does. For a
``calibration`` or ``qat`` stage, the stage's own checkpoint (its ``Checkpoint``
callback's ``best``, else ``last``) goes into the model the pipeline built.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from hatcli.engine.build import split_node
from hatcli.engine.convert import ConvertContext, stage_qat_mode
from hatcli.engine.stage import build_model, seed_everything
from hatcli.errors import InputError
from hatcli.export.stage import load_stage_checkpoint, stage_checkpoint
from hatcli.quant.fake_quantize import FakeQuantize
from hatcli.quant.nn.quantized.base import IntegerModule
from hatcli.spec.spec import Spec, StageSpec

INTEGER_STEP = "QAT2Quantize"


@dataclass
class StageModel:
    """The QAT model of a stage, in eval mode on the CPU, and where its weights came from."""

    model: nn.Module
    weights: str  # a checkpoint path, or what the pipeline loaded
    converts: bool  # the stage's own model is the integer one
    mode: str  # "graph" or "eager" preparation
    qat_mode: str


def _qat_part(stage: StageSpec) -> tuple[StageSpec, bool]:
    """The stage with its pipeline cut before ``QAT2Quantize``, and whether it was."""
    pipeline = dict(stage.get("model_convert_pipeline") or {})
    converters = list(pipeline.get("converters") or [])
    names = [split_node(node)[0] for node in converters]
    if INTEGER_STEP not in names:
        return stage, False
    pipeline["converters"] = converters[: names.index(INTEGER_STEP)]
    return replace(stage, settings={**stage.settings, "model_convert_pipeline": pipeline}), True


def build_stage_model(spec: Spec, stage_name: str) -> StageModel:
    """The stage's QAT model with its weights; an ``InputError`` for a stage without
    quantization or without the checkpoint it should have written."""
    stage = spec.stage(stage_name)
    seed_everything(int(stage.get("seed")))
    qat_stage, converts = _qat_part(stage)
    context = ConvertContext(stage.name, stage_qat_mode(stage), spec.positions)
    model = build_model(spec, qat_stage, context=context)
    if any(isinstance(m, IntegerModule) for m in model.modules()):
        raise InputError(
            f"--stage {stage_name}: the pipeline builds an integer model without "
            "QAT2Quantize; hat analyze needs the QAT model the integer one comes from"
        )
    if not any(isinstance(m, FakeQuantize) for m in model.modules()):
        raise InputError(
            f"--stage {stage_name}: the stage's model is not quantized (its "
            "model_convert_pipeline has no Float2QAT); analyze a calibration, qat or "
            "int_infer stage"
        )
    weights = context.loaded_from or "the model's initial weights"
    if not converts:
        path = stage_checkpoint(spec, stage)
        if path is not None and not path.exists():
            raise InputError(
                f"--stage {stage_name}: no checkpoint yet ({path}); run "
                f"'hat train {spec.path} --stage {stage_name}' first"
            )
        loaded = load_stage_checkpoint(spec, stage, model)
        weights = loaded or weights
    notes = context.notes.get("quantization")
    mode = str(notes[0]) if notes else "eager"
    return StageModel(model.to("cpu").eval(), weights, converts, mode, context.qat_mode)
