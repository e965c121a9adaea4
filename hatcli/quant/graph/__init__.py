"""Graph-mode preparation: quantizing a plain PyTorch model by tracing it (torch.fx)."""

from hatcli.quant.graph.prepare import prepare, records
from hatcli.quant.graph.report import OpRecord
from hatcli.quant.graph.tracer import TraceFailure

__all__ = ["OpRecord", "TraceFailure", "prepare", "records"]
