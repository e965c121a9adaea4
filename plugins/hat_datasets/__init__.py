"""Built-in datasets: the bundled digits, image folders, .npz arrays and CIFAR-10."""

from __future__ import annotations

from typing import Any

from hat_datasets import cifar10, digits, image_folder, npz_arrays
from hatcli.hookspecs import hookimpl


@hookimpl
def hat_register_datasets(register: Any) -> None:
    register("Digits", digits.digits, digits.SCHEMA, "scikit-learn's 8x8 digits (bundled)")
    register(
        "ImageFolder",
        image_folder.ImageFolder,
        image_folder.SCHEMA,
        "Images in one sub-folder per class",
    )
    register("NpzArrays", npz_arrays.npz_arrays, npz_arrays.SCHEMA, "Arrays in a .npz file")
    register("Cifar10", cifar10.Cifar10, cifar10.SCHEMA, "CIFAR-10, binary distribution")
