"""Input too large or not a file at all: refused at once, as one located line (exit 2)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hatcli
from hatcli.cli import app
from hatcli.engine.launch import PROCESSES_PER_CORE, Launch, check_launch, usable_cores
from hatcli.errors import SpecError
from hatcli.spec import loader

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits" / "spec.yaml"
SMALL = """\
version: 1
name: small
model: {type: DigitsNet}
data:
  train: {type: Digits, split: train, batch_size: 64}
stages:
  float:
    optimizer: {type: SGD, lr: 0.1}
    num_epochs: 1
"""


def spec_error(path: Path | str) -> str:
    with pytest.raises(SpecError) as info:
        hatcli.load_spec(path)
    lines = [str(p) for p in info.value.problems]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_spec_larger_than_16_mib_is_refused_without_parsing_it(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    with path.open("wb") as file:
        file.write(SMALL.encode())
        file.truncate(4 * loader.MAX_SPEC_BYTES)  # sparse: NUL bytes the parser would refuse
    line = spec_error(path)
    assert line == f"{path}:1:1: larger than 16 MiB; a spec is a small file"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    found: list[str] = []
    loading = threading.Thread(target=lambda: found.append(spec_error(fifo)), daemon=True)
    loading.start()
    loading.join(10)
    if loading.is_alive():
        with fifo.open("w"):  # the writer it waits for: lets the thread end
            pass
        pytest.fail("opening the FIFO waited for a writer")
    assert found == [f"{fifo}:1:1: not a regular file (a FIFO); give the path of a YAML file"]


def test_a_character_device_is_refused_before_it_is_read() -> None:
    # /dev/zero would never end; /dev/null is the same kind of file and ends at once.
    line = spec_error("/dev/null")
    assert (
        line
        == "/dev/null:1:1: not a regular file (a character device); give the path of a YAML file"
    )


def test_a_large_plain_list_is_not_taken_for_an_alias_bomb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real limit (100000 nodes) needs a 120000-line file, slow to parse; a lower one
    # shows the same rule.
    monkeypatch.setattr(loader, "MAX_EXPANDED_NODES", 1000)
    path = tmp_path / "spec.yaml"
    path.write_text(SMALL + "x-list:\n" + "".join(f"  - {i}\n" for i in range(5000)))
    assert len(hatcli.load_spec(path).data["x-list"]) == 5000
    bomb = "x-a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
    bomb += "".join(f"x-{i}: &{i} [{', '.join([f'*{i - 1}'] * 4)}]\n" for i in range(1, 5))
    path.write_text(SMALL + bomb.replace("*0", "*a"))  # 4 * 4 * 4 * 4 * 10 nodes
    assert "aliases expand the document by more than 1000 nodes" in spec_error(path)


def test_aliases_that_add_less_than_the_limit_load_in_a_large_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "MAX_EXPANDED_NODES", 1000)
    path = tmp_path / "spec.yaml"
    text = SMALL + "x-list: [" + ", ".join(map(str, range(5000))) + "]\n"
    text += "x-block: &block [1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
    text += "x-uses: [" + ", ".join(["*block"] * 100) + "]\n"  # 900 nodes added
    path.write_text(text)
    assert len(hatcli.load_spec(path).data["x-uses"]) == 100


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        (
            "name: small",
            "name: small\nseed: 1e23",
            "1e+23 is greater than the maximum of 4294967295",
        ),
        ("num_epochs: 1", "num_epochs: 1\n    seed: 4294967296", "greater than the maximum"),
        ("batch_size: 64", "batch_size: 1e100", "1e+100 is greater than the maximum of 2147483647"),
        (
            "batch_size: 64",
            "batch_size: 64, num_workers: 100000",
            "greater than the maximum of 256",
        ),
        ("num_epochs: 1", "num_epochs: 1e12", "greater than the maximum of 2147483647"),
        ("num_epochs: 1", "num_steps: 3000000000", "greater than the maximum of 2147483647"),
        ("num_epochs: 1", "num_epochs: 1\n    log_interval: 1e40", "greater than the maximum"),
    ],
    ids=["seed", "stage-seed", "batch_size", "num_workers", "num_epochs", "num_steps", "log"],
)
def test_values_too_large_for_torch_are_schema_errors(
    tmp_path: Path, old: str, new: str, fragment: str
) -> None:
    path = tmp_path / "spec.yaml"
    text = SMALL.replace(old, new, 1)
    path.write_text(text)
    line = spec_error(path)
    key = new.split("\n")[-1].split(",")[-1].split(":")[0].strip()
    row = next(i for i, t in enumerate(text.splitlines(), 1) if f"{key}:" in t)
    assert line.startswith(f"{path}:{row}:"), line
    assert fragment in line


def test_the_largest_values_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    text = SMALL.replace("name: small", "name: small\nseed: 4294967295")
    path.write_text(text.replace("batch_size: 64", "batch_size: 2147483647, num_workers: 256"))
    assert hatcli.load_spec(path).seed == 2**32 - 1


def hat(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("port", ["0", "99999"])
def test_a_master_port_outside_1_to_65535_is_an_argument_error(tmp_path: Path, port: str) -> None:
    work = tmp_path / "w"
    result = hat(
        "train", EXAMPLE, "-s", "float", "--work-dir", work, "--nproc", "2", "--master-port", port
    )
    line = one_line_error(result)
    assert line == f"error: --master-port {port} is not a port: use 1..65535"


def test_more_processes_than_4_per_core_are_refused_before_any_starts(tmp_path: Path) -> None:
    limit = PROCESSES_PER_CORE * usable_cores()
    work = tmp_path / "w"
    result = hat("train", EXAMPLE, "-s", "float", "--work-dir", work, "--nproc", str(limit + 1))
    one_line_error(result, f"--nproc {limit + 1} is more than {limit}")
    check_launch(Launch(nproc=limit))  # the limit itself is allowed
