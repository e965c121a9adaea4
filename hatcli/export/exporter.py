"""The contract of an export format: what a factory registered with
``hat_register_exporters`` returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from hatcli.export.result import ExportResult

Batch = tuple[torch.Tensor, torch.Tensor]
"""``(inputs, targets)`` of one batch of the stage's ``val`` split, inputs as float32."""


class Exporter(ABC):
    """One format of ``hat export --format NAME``, given by a plugin::

        @hatcli.hookimpl
        def hat_register_exporters(register):
            register("tflite", TFLiteExporter, help="TensorFlow Lite flatbuffer")

    ``hat export`` calls the registered factory with no arguments, then ``check()``, then
    builds the stage's model as ``hat train`` does, loads the weights the stage
    produced, and calls ``export``.
    """

    @property
    @abstractmethod
    def suffix(self) -> str:
        """What the default output file adds to the stage's name: without ``--output``
        the file is ``{work_dir}/{stage}{suffix}`` (e.g. ``".onnx"``). A class attribute
        does."""

    def check(self) -> None:  # noqa: B027 - an optional hook, not an abstract one
        """Raise ``hatcli.InputError`` when this format cannot be written here (a package
        it needs is missing); called before the model is built. Does nothing by default."""

    @abstractmethod
    def export(
        self,
        model: nn.Module,
        example: torch.Tensor,
        batches: list[Batch],
        result: ExportResult,
        path: Path,
    ) -> None:
        """Write ``model`` in this format to ``path`` and fill ``result``.

        ``model`` is the stage's model in eval mode, on the CPU, called under
        ``torch.no_grad()``; ``result.kind`` says whether it is ``float``, ``qat`` or
        ``integer``. ``example`` is a batch of at most two samples (for tracing).
        ``batches`` is the stage's whole ``val`` split: run the exported file on it and
        compare with ``model``, setting ``result.samples``, ``result.accuracy`` and
        ``result.agreements`` (see ``hatcli.export.result.agreement``), and
        ``result.label`` / ``result.runner`` for the report. Write the file only once it
        is checked, and atomically (``hatcli.engine.checkpoint_io.atomic_write_bytes``).

        Raise ``hatcli.InputError`` when the model has no form in this format (exit 2)
        and ``hatcli.RunError`` when the written form does not reproduce it (exit 1).
        """
