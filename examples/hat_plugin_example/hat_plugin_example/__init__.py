"""An example third-party hat plugin: TinyMLP, a two-layer perceptron for 8x8 digits.

TinyMLP is plain PyTorch: hat's Float2QAT quantizes it by tracing (graph mode), so the
plugin holds no quantization code and the example spec runs all four stages.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import hatcli


class TinyMLP(nn.Module):
    """Flatten a 1x8x8 image, then Linear-ReLU-Linear."""

    def __init__(self, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(8 * 8, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "hidden": {"type": "integer", "minimum": 1, "default": 32},
        "num_classes": {"type": "integer", "minimum": 2, "default": 10},
    },
}


@hatcli.hookimpl
def hat_register_models(register: Any) -> None:
    register("TinyMLP", TinyMLP, SCHEMA, "Two-layer perceptron for 8x8 digits")
