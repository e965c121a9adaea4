"""Plain PyTorch models in the patterns of well-known architecture families, small enough
to train on a CPU in seconds: what a user brings to ``hat`` without writing a line for it
(no ``fuse_model``, no ``set_qconfig``, no hat import).

``MODELS`` maps each family's name to its constructor; every constructor takes
``num_classes`` and builds a model for 3x32x32 inputs. Classifiers return ``[N, classes]``
logits, the segmentation models in ``SEGMENTATION`` ``[N, classes, H, W]``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .convnext import ConvNeXt
from .deeplabv3 import DeepLabV3
from .densenet import DenseNet
from .efficientnet import EfficientNet
from .googlenet import GoogLeNet
from .lraspp import LRASPP
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3Small
from .regnet import RegNetY
from .resnet import ResNet
from .shufflenet_v2 import ShuffleNetV2
from .squeezenet import SqueezeNet
from .unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "ResNet": ResNet,
    "MobileNetV2": MobileNetV2,
    "MobileNetV3Small": MobileNetV3Small,
    "EfficientNet": EfficientNet,
    "RegNetY": RegNetY,
    "ShuffleNetV2": ShuffleNetV2,
    "SqueezeNet": SqueezeNet,
    "GoogLeNet": GoogLeNet,
    "DenseNet": DenseNet,
    "ConvNeXt": ConvNeXt,
    "LRASPP": LRASPP,
    "DeepLabV3": DeepLabV3,
    "UNet": UNet,
}
SEGMENTATION = frozenset({"LRASPP", "DeepLabV3", "UNet"})
INPUT_SHAPE = (3, 32, 32)

__all__ = ["INPUT_SHAPE", "MODELS", "SEGMENTATION"]
