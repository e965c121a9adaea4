"""Built-in models."""

from __future__ import annotations

from typing import Any

from hat_models.digits_net import SCHEMA as DIGITS_NET_SCHEMA
from hat_models.digits_net import DigitsNet
from hatcli.hookspecs import hookimpl


@hookimpl
def hat_register_models(register: Any) -> None:
    register("DigitsNet", DigitsNet, DIGITS_NET_SCHEMA, "Small residual CNN for 8x8 digits")
