"""``hat analyze``: which layer costs accuracy, why, and what to change in the spec.

``analyze_stage`` measures a stage's model (float, QAT and integer, op by op; the
sensitivity of the validation metric to each layer's quantizers) and suggests qconfig
rules; ``write_outputs`` writes ``report.html``, ``layers.csv`` and ``sensitivity.json``.
"""

from hatcli.analyze.result import Analysis
from hatcli.analyze.run import analyze_stage, output_folder, require_plotting, write_outputs
from hatcli.analyze.summary import summary_lines

__all__ = [
    "Analysis",
    "analyze_stage",
    "output_folder",
    "require_plotting",
    "summary_lines",
    "write_outputs",
]
