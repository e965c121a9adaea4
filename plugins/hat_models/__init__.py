"""Built-in models."""

from __future__ import annotations

from typing import Any

from hat_models.digits_net import SCHEMA as DIGITS_NET_SCHEMA
from hat_models.digits_net import DigitsNet
from hat_models.mobilenet_v2 import SCHEMA as MOBILENET_V2_SCHEMA
from hat_models.mobilenet_v2 import MobileNetV2
from hat_models.resnet import SCHEMA as RESNET18_SCHEMA
from hat_models.resnet import ResNet18
from hatcli.hookspecs import hookimpl


@hookimpl
def hat_register_models(register: Any) -> None:
    register("DigitsNet", DigitsNet, DIGITS_NET_SCHEMA, "Small residual CNN for 8x8 digits")
    register("ResNet18", ResNet18, RESNET18_SCHEMA, "CIFAR-style ResNet-18 for 3x32x32 images")
    register(
        "MobileNetV2",
        MobileNetV2,
        MOBILENET_V2_SCHEMA,
        "CIFAR-style MobileNetV2 for 3x32x32 images",
    )
