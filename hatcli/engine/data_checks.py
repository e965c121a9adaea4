"""Telling a batch of bad data from a bug when the model or the loss fails on it, shared
by the training step and validation: labels out of range, inputs the model does not
take, non-finite values, datasets that cannot read a file."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from hatcli.errors import DataError, one_line

# Losses whose integer targets are class indices along the outputs' dim 1.
CLASS_INDEX_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)


def data_name(loader: Any, split: str) -> str:
    """``train data``, or ``train data from FILE`` when the dataset names its ``source``."""
    source = getattr(getattr(loader, "dataset", None), "source", None)
    return f"{split} data from {source}" if source else f"{split} data"


def named_batches(loader: Iterable[Any], split: str) -> Iterator[Any]:
    """The loader's batches; a dataset's ``DataError`` (a damaged file) gets the split's name."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except DataError as exc:
            raise DataError(f"{split} data: {one_line(exc)}") from None
        yield batch


def all_finite(value: Any) -> bool:
    """Whether every float in ``value`` (a tensor, or lists, tuples, dicts of them) is finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, (list, tuple)):
        return all(all_finite(item) for item in value)
    if isinstance(value, dict):
        return all(all_finite(item) for item in value.values())
    return True


def refuse_non_finite_inputs(inputs: Any, data: str, when: str) -> None:
    """A ``DataError`` when a batch's inputs hold NaN or infinity (``data`` names the
    split, ``when`` the batch)."""
    if not all_finite(inputs):
        raise DataError(f"{data} has non-finite inputs in this batch ({when})")


def label_problem(outputs: Any, targets: Any, loss_fn: Any, any_loss: bool = False) -> str | None:
    """What is wrong with ``targets`` as class indices of ``outputs``, or None.

    Only for the class-index losses unless ``any_loss``: other losses may read integer
    targets differently.
    """
    if not (any_loss or isinstance(loss_fn, CLASS_INDEX_LOSSES)):
        return None
    if not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        return None
    if outputs.ndim < 2 or targets.ndim != outputs.ndim - 1 or targets.numel() == 0:
        return None
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        return None  # class probabilities, not indices
    classes = outputs.shape[1]
    bad = (targets < 0) | (targets >= classes)
    ignore = getattr(loss_fn, "ignore_index", None)
    if isinstance(ignore, int):
        bad &= targets != ignore
    if not bool(bad.any()):  # the one device sync while all is well
        return None
    label = int(targets[bad].flatten()[0])
    return f"has label {label}; the model's {classes} classes are 0..{classes - 1}"


def _first_conv_channels(model: nn.Module) -> int | None:
    for module in model.modules():
        weight = getattr(module, "weight", None)
        groups = getattr(module, "groups", None)
        if isinstance(weight, torch.Tensor) and weight.ndim == 4 and isinstance(groups, int):
            return int(weight.shape[1]) * groups
    return None


def input_problem(exc: BaseException, inputs: Any, model: nn.Module) -> str | None:
    """What is wrong with the shape of ``inputs`` when ``exc`` is the model refusing it.

    Called a data problem only when torch's message shows the batch's own shape, or (the
    integer model's messages do not) its channels differ from the first convolution's.
    """
    if not isinstance(exc, RuntimeError) or not isinstance(inputs, torch.Tensor):
        return None
    text, shape = one_line(exc), list(inputs.shape)
    shown = str(shape) in text  # conv: "expected input[4, 3, 8, 8] to have 1 channels"
    if inputs.ndim == 2:  # linear: "mat1 and mat2 shapes cannot be multiplied (4x192 and 64x10)"
        shown = shown or re.search(rf"\b{shape[0]}x{shape[1]}\b", text) is not None
    if shown:
        return f"has inputs of shape {shape}, which the model does not take: {text}"
    channels = _first_conv_channels(model) if inputs.ndim == 4 else None
    if channels is None or channels == shape[1]:
        return None
    return (
        f"has {shape[1]}-channel inputs (shape {shape}) but the model's first convolution "
        f"takes {channels} channels"
    )


def checked_forward(
    model: nn.Module,
    loss_fn: Any,
    inputs: Any,
    targets: Any,
    data: str,
    when: str,
    layers: nn.Module | None = None,
) -> tuple[Any, torch.Tensor]:
    """The outputs and the loss of one batch; a ``DataError`` when the batch is the cause.

    ``data`` names the split (``data_name``), ``when`` the batch; ``layers`` is the model
    to inspect when ``model`` wraps it (DDP). Labels are checked before the loss runs: on
    CUDA an out-of-range label is a device-side assert that leaves nothing to inspect.
    """
    outputs = None
    try:
        outputs = model(inputs)
        problem = label_problem(outputs, targets, loss_fn)
        if problem is None:
            return outputs, loss_fn(outputs, targets)
    except (IndexError, RuntimeError) as exc:
        if outputs is None:
            problem = input_problem(exc, inputs, layers or model)
        else:  # the loss failed, e.g. "Target 12 is out of bounds" from another loss
            problem = label_problem(outputs, targets, loss_fn, any_loss=True)
        if problem is None:
            raise
    raise DataError(f"{data} {problem} ({when})")
