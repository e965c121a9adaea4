"""The zoo as a third-party ``hat`` plugin, installed as pip would leave it.

``PLUGIN_CODE`` is the plugin package's ``__init__.py``: it implements
``hat_register_models`` and registers each zoo model as ``Zoo<name>`` (``ZooResNet``, ...;
the built-in plugin already has a ``MobileNetV2``) with a JSON schema of its
constructor's arguments. ``install_plugin`` writes it, and the ``zoo`` package it imports,
into a site folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

from plugin_site import write_plugin_site

PLUGIN_MODULE = "hat_zoo"
PREFIX = "Zoo"
ZOO_DIR = Path(__file__).resolve().parent

PLUGIN_CODE = '''\
"""hat_zoo: plain PyTorch models of well-known families, registered as hat models."""

import hatcli
import zoo


def _int(default, minimum=1):
    return {"type": "integer", "minimum": minimum, "default": default}


def _number(default, minimum=0.0, maximum=None):
    schema = {"type": "number", "minimum": minimum, "default": default}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _ints(default, count=None):
    schema = {
        "type": "array",
        "items": {"type": "integer", "minimum": 1},
        "minItems": count or 1,
        "default": list(default),
    }
    if count is not None:
        schema["maxItems"] = count
    return schema


def _schema(**properties):
    return {"type": "object", "additionalProperties": False, "properties": properties}


CLASSES = _int(10, minimum=2)
SEG_CLASSES = _int(4, minimum=2)
DROPOUT = _number(0.2, maximum=1.0)

MODELS = {
    "ResNet": (
        _schema(num_classes=CLASSES, width=_int(8), layers=_ints((1, 1, 1, 1), count=4)),
        "ResNet family: BasicBlocks, in-place residual add, max-pool stem",
    ),
    "MobileNetV2": (
        _schema(
            num_classes=CLASSES,
            width_mult=_number(1.0, minimum=0.1),
            last_channel=_int(64),
            dropout=DROPOUT,
        ),
        "MobileNetV2 family: inverted residuals with ReLU6, x + conv(x)",
    ),
    "MobileNetV3Small": (
        _schema(
            num_classes=CLASSES,
            width_mult=_number(0.5, minimum=0.1),
            last_channel=_int(128),
            dropout=DROPOUT,
        ),
        "MobileNetV3-Small family: Hardswish, squeeze-excitation with Hardsigmoid",
    ),
    "EfficientNet": (
        _schema(
            num_classes=CLASSES,
            stochastic_depth_prob=_number(0.2, maximum=1.0),
            dropout=DROPOUT,
            last_channel=_int(96),
        ),
        "EfficientNet-B0 family: MBConv with SiLU, SE, stochastic depth",
    ),
    "RegNetY": (
        _schema(
            num_classes=CLASSES,
            stem_width=_int(8),
            widths=_ints((16, 32, 64)),
            depths=_ints((1, 1, 2)),
            group_width=_int(8),
            se_ratio=_number(0.25),
        ),
        "RegNet-Y family: grouped bottlenecks with squeeze-excitation",
    ),
    "ShuffleNetV2": (
        _schema(
            num_classes=CLASSES,
            stages_repeats=_ints((2, 2, 1), count=3),
            stages_out_channels=_ints((8, 16, 32, 64, 128), count=5),
        ),
        "ShuffleNetV2 family: channel split, concat and channel shuffle",
    ),
    "SqueezeNet": (
        _schema(num_classes=CLASSES, width=_int(4), dropout=_number(0.5, maximum=1.0)),
        "SqueezeNet 1.1 family: Fire modules, conv classifier",
    ),
    "GoogLeNet": (
        _schema(num_classes=CLASSES, width=_int(8, minimum=2), dropout=DROPOUT),
        "GoogLeNet family: four-branch Inception blocks",
    ),
    "DenseNet": (
        _schema(
            num_classes=CLASSES,
            growth_rate=_int(8),
            block_config=_ints((2, 2, 2)),
            num_init_features=_int(16),
            bn_size=_int(2),
            drop_rate=_number(0.0, maximum=1.0),
        ),
        "DenseNet family: dense blocks of pre-activation layers, transitions",
    ),
    "ConvNeXt": (
        _schema(
            num_classes=CLASSES,
            depths=_ints((1, 1, 2)),
            dims=_ints((16, 32, 64)),
            drop_path_rate=_number(0.1, maximum=1.0),
            layer_scale_init_value=_number(1e-6),
        ),
        "ConvNeXt family: depthwise 7x7, channels-last LayerNorm and MLP, layer scale",
    ),
    "LRASPP": (
        _schema(
            num_classes=SEG_CLASSES,
            width_mult=_number(0.5, minimum=0.1),
            inter_channels=_int(32),
        ),
        "LR-ASPP segmentation head on a MobileNetV3-style backbone",
    ),
    "DeepLabV3": (
        _schema(
            num_classes=SEG_CLASSES,
            width=_int(8),
            aspp_channels=_int(32),
            atrous_rates=_ints((1, 2, 3)),
        ),
        "DeepLabV3 family: ASPP head on a dilated residual backbone",
    ),
    "UNet": (
        _schema(num_classes=SEG_CLASSES, in_channels=_int(3), width=_int(8)),
        "UNet: double convs, max-pool down, transposed-conv up, skip concat",
    ),
}


@hatcli.hookimpl
def hat_register_models(register):
    for name, (schema, help) in MODELS.items():
        register("PREFIX" + name, zoo.MODELS[name], schema, help)
'''.replace('"PREFIX"', repr(PREFIX))


def install_plugin(site: Path) -> dict[str, str]:
    """``hat_zoo`` (the plugin) and ``zoo`` (the models it imports) in ``site``, with a
    ``hat`` entry point as pip would leave them; returns the environment that makes a
    subprocess find them."""
    shutil.copytree(
        ZOO_DIR,
        site / "zoo",
        ignore=shutil.ignore_patterns("__pycache__", "plugin.py"),
        dirs_exist_ok=True,
    )
    return write_plugin_site(site, PLUGIN_MODULE, PLUGIN_CODE)


def plugin_module() -> ModuleType:
    """The plugin package's module, built from ``PLUGIN_CODE`` in this process (for the
    ``plugin`` fixture); it imports the ``zoo`` package the tests import."""
    module = ModuleType(PLUGIN_MODULE)
    exec(compile(PLUGIN_CODE, f"<{PLUGIN_MODULE}>", "exec"), module.__dict__)
    return module
