"""Callbacks: the base class's contract and the options the built-in ones accept."""

from __future__ import annotations

from pathlib import Path

import pytest

import hatcli
from hatcli.errors import SpecError

SPEC = """\
version: 1
name: options
work_dir: "{work_dir}"
model: {{type: DigitsNet}}
data:
  train: {{type: Digits, split: train}}
  val: {{type: Digits, split: val}}
stages:
  qat:
    model_convert_pipeline: {{qat_mode: with_bn, converters: [{{type: Float2QAT}}]}}
    optimizer: {{type: SGD, lr: 0.01}}
    num_epochs: 1
    callbacks:
      - {callback}
"""


def load(tmp_path: Path, callback: str) -> hatcli.Spec:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(work_dir=tmp_path / "runs", callback=callback))
    return hatcli.load_spec(path)


@pytest.mark.parametrize(
    ("callback", "option"),
    [
        ("{type: FuseBN, modules: [[stem]], step_or_epoch: [1], inplace: false}", "inplace"),
        ("{type: FuseBN, modules: [[stem]], step_or_epoch: [1], inplace: true}", "inplace"),
        ("{type: Checkpoint, strict_match: true}", "strict_match"),
    ],
)
def test_an_option_hat_does_not_honour_is_a_spec_error(
    tmp_path: Path, callback: str, option: str
) -> None:
    with pytest.raises(SpecError) as info:
        load(tmp_path, callback)
    (problem,) = info.value.problems
    assert f"unknown key {option!r}" in problem.message
    assert problem.line == 14


def test_the_options_without_them_load(tmp_path: Path) -> None:
    load(tmp_path, "{type: FuseBN, modules: [[stem]], step_or_epoch: [1]}")
    load(tmp_path, "{type: Checkpoint, save_last: true}")
