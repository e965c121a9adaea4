"""Exporting a stage's model to a file other tools run, and checking that file.

The formats are plugin components of kind ``exporters`` (``hatcli.hookspecs``); each is
an ``Exporter``. The built-in ``onnx``, ``onnx-integer`` and ``torchscript`` come from
the ``hat_exporters`` plugin and are written here, one module a format: ``onnx_float``
(``torch.onnx``), ``onnx_qdq``, ``onnx_integer`` (both recorded by ``onnx_record`` into
an ``onnx_graph.Graph``, sharing ``onnx_common``'s checks) and ``torchscript``.
``stage.export_stage`` is what ``hat export`` runs.
"""

from hatcli.export.exporter import Batch, Exporter
from hatcli.export.result import Agreement, ExportResult

__all__ = ["Agreement", "Batch", "ExportResult", "Exporter"]
