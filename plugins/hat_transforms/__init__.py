"""Built-in transforms for a data split's ``transforms`` list: Pillow does the image
operations (what torchvision's transforms call on PIL images), so they work with the CPU
and the CUDA builds of torch alike; ``hatcli.engine.transforms`` applies them."""

from __future__ import annotations

from typing import Any

from hat_transforms import color, geometry, tensor
from hatcli.hookspecs import hookimpl

SIZE = {
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
    ],
    "description": "One number (a square, or Resize's shorter side) or [height, width].",
}
INTERPOLATION = {"enum": list(geometry.INTERPOLATION), "default": "bilinear"}
RANGE = {
    "type": "array",
    "items": {"type": "number", "exclusiveMinimum": 0},
    "minItems": 2,
    "maxItems": 2,
}
FACTOR = {
    "oneOf": [
        {"type": "number", "minimum": 0},
        {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 2, "maxItems": 2},
    ],
    "default": 0,
    "description": "v: a factor in [1 - v, 1 + v]; or [low, high].",
}
CHANNEL_VALUES = {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4}


def _schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(required),
        "properties": properties,
    }


SCHEMAS: dict[str, dict[str, Any]] = {
    "Resize": _schema({"size": SIZE, "interpolation": INTERPOLATION}, ("size",)),
    "CenterCrop": _schema({"size": SIZE}, ("size",)),
    "RandomCrop": _schema(
        {
            "size": SIZE,
            "padding": {"type": "integer", "minimum": 0, "default": 0},
            "padding_mode": {"enum": ["constant", "edge", "reflect"], "default": "constant"},
            "fill": {"type": "integer", "minimum": 0, "maximum": 255, "default": 0},
        },
        ("size",),
    ),
    "RandomResizedCrop": _schema(
        {
            "size": SIZE,
            "scale": {**RANGE, "description": "Area of the crop, of the image's [low, high]."},
            "ratio": {**RANGE, "description": "Aspect ratio (width / height) [low, high]."},
            "interpolation": INTERPOLATION,
        },
        ("size",),
    ),
    "RandomHorizontalFlip": _schema(
        {"p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5}}
    ),
    "ColorJitter": _schema(
        {
            "brightness": FACTOR,
            "contrast": FACTOR,
            "saturation": FACTOR,
            "hue": {
                "oneOf": [
                    {"type": "number", "minimum": 0, "maximum": 0.5},
                    {
                        "type": "array",
                        "items": {"type": "number", "minimum": -0.5, "maximum": 0.5},
                        "minItems": 2,
                        "maxItems": 2,
                    },
                ],
                "default": 0,
                "description": "h: a hue turn in [-h, h] of a full turn; or [low, high].",
            },
        }
    ),
    "Normalize": _schema(
        {
            "mean": CHANNEL_VALUES,
            "std": {**CHANNEL_VALUES, "items": {"type": "number", "exclusiveMinimum": 0}},
        },
        ("mean", "std"),
    ),
    "ToTensor": _schema({}),
}

HELP = {
    "Resize": "Resize an image (Pillow)",
    "CenterCrop": "The central window",
    "RandomCrop": "A random window, after optional padding",
    "RandomResizedCrop": "A random window of random area and aspect, resized",
    "RandomHorizontalFlip": "Mirror left to right with probability p",
    "ColorJitter": "Random brightness, contrast, saturation and hue",
    "Normalize": "(x - mean) / std per channel",
    "ToTensor": "An image as a float CxHxW tensor in [0, 1]",
}
FACTORIES = {
    "Resize": geometry.Resize,
    "CenterCrop": geometry.CenterCrop,
    "RandomCrop": geometry.RandomCrop,
    "RandomResizedCrop": geometry.RandomResizedCrop,
    "RandomHorizontalFlip": geometry.RandomHorizontalFlip,
    "ColorJitter": color.ColorJitter,
    "Normalize": tensor.Normalize,
    "ToTensor": tensor.ToTensor,
}


@hookimpl
def hat_register_transforms(register: Any) -> None:
    for name, factory in FACTORIES.items():
        register(name, factory, SCHEMAS[name], HELP[name])
