"""Every mistake in a spec is one located line: FILE:LINE:COL: path: message."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

import hatcli
from hatcli.errors import SpecError
from hatcli.spec.loader import MAX_EXPANDED_NODES, load_yaml

GOOD = """\
version: 1
name: digits
work_dir: "{work_dir_value}"
model: &model {type: DigitsNet, num_classes: 10}
data:
  train: {type: Digits, split: train, batch_size: 64, shuffle: true}
  val: {type: Digits, split: val, batch_size: 256}
stages:
  float:
    optimizer: {type: SGD, lr: 0.1, momentum: 0.9}
    lr_scheduler: {type: CosineAnnealingLR}
    num_epochs: 1
    callbacks:
      - {type: Validation}
      - {type: Checkpoint, name_prefix: float-, monitor_metric_key: accuracy}
"""

# (name, replace this text of GOOD, with this, expected "line:col", expected fragment)
CASES = [
    ("unknown top key", "name: digits", "name: digits\nnmae: x", "3:1", "did you mean 'name'"),
    ("wrong version", "version: 1", "version: 2", "1:10", "version: 1 was expected"),
    ("unknown model", "DigitsNet,", "DigitNet,", "4:22", "did you mean 'DigitsNet'"),
    ("model param typo", "num_classes: 10", "num_clases: 10", "4:33", "unknown key 'num_clases'"),
    ("model param type", "num_classes: 10", "num_classes: ten", "4:46", "'ten' is not of type"),
    ("batch size", "batch_size: 64", "batch_size: 0", "6:51", "less than the minimum of 1"),
    ("dataset enum", "split: val,", "split: vall,", "7:30", "did you mean 'val'"),
    ("optimizer unknown", "type: SGD", "type: SDG", "10:23", "did you mean 'SGD'"),
    ("optimizer key", "momentum: 0.9", "momentm: 0.9", "10:37", "did you mean 'momentum'"),
    ("optimizer value", "lr: 0.1", "lr: fast", "10:32", "'fast' is not of type 'number'"),
    ("scheduler required", "CosineAnnealingLR}", "StepLR}", "11:19", "missing required key"),
    ("negative epochs", "num_epochs: 1", "num_epochs: -1", "12:17", "less than the minimum of 0"),
    ("callback unknown", "{type: Validation}", "{type: Validaton}", "14:16", "'Validation'"),
    ("callback enum", "accuracy}", "accuracy, mode: maxx}", "15:85", "did you mean 'max'"),
    ("stage key", "    num_epochs: 1", "    num_epoch: 1", "12:5", "did you mean 'num_epochs'"),
    ("placeholder", "name_prefix: float-", "name_prefix: '{stag}-'", "15:41", "{stag}"),
    (
        "qat mode",
        "    num_epochs: 1",
        "    num_epochs: 1\n    model_convert_pipeline: {qat_mode: fusebn}",
        "13:40",
        "did you mean 'fuse_bn'",
    ),
    (
        "epochs and steps",
        "    num_epochs: 1",
        "    num_epochs: 1\n    num_steps: 5",
        "13:5",
        "not both",
    ),
    (
        "no optimizer",
        "    optimizer: {type: SGD, lr: 0.1, momentum: 0.9}\n",
        "",
        "9:3",
        "no 'optimizer'",
    ),
    ("no model", "model: &model {type: DigitsNet, num_classes: 10}\n", "", "8:3", "no model"),
    ("tag", "name: digits", "name: !!python/name:os.system digits", "2:7", "not allowed"),
    ("omap", "name: digits", "name: digits\nx-o: !!omap [a: 1]", "3:6", "tag '!!omap' is not"),
    ("set", "name: digits", "name: digits\nx-s: !!set {a}", "3:6", "tag '!!set' is not allowed"),
    ("pairs", "name: digits", "name: digits\nx-p: !!pairs [a: 1]", "3:6", "'!!pairs' is not"),
    ("binary", "name: digits", "name: digits\nx-b: !!binary aGk=", "3:6", "'!!binary' is not"),
    ("timestamp", "name: digits", "name: !!timestamp 2001-12-14", "2:7", "'!!timestamp' is not"),
    ("merged tag", "name: digits", "name: digits\nx-m: {<<: !!set {a}}", "3:6", "'!!set' is not"),
    ("tagged key", "name: digits", "name: digits\n!!binary aGk=: 1", "3:1", "'!!binary' is not"),
    ("bad !!int", "name: digits", "name: digits\nx-i: !!int abc", "3:6", "cannot read 'abc' as"),
    ("bad !!bool", "name: digits", "name: digits\nx-i: !!bool maybe", "3:6", "cannot read"),
    ("self alias", "name: digits", "name: digits\nx-a: &a [1, *a]", "3:13", "inside the node"),
    ("duplicate key", "name: digits", "name: digits\nname: again", "3:1", "duplicate key"),
    ("yaml syntax", "callbacks:", "callbacks: [", "14:7", "YAML"),
    ("stage name all", "  float:", "  all:", "9:3", "name 'all' is not allowed"),
]


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace("{work_dir_value}", str(tmp_path / "runs")))
    return path


@pytest.mark.parametrize(
    ("old", "new", "where", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_broken_spec_is_one_located_line(
    tmp_path: Path, old: str, new: str, where: str, fragment: str
) -> None:
    assert old in GOOD
    path = write_spec(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        hatcli.load_spec(path)
    lines = [str(p) for p in info.value.problems]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:{where}: "), lines
    assert fragment in lines[0]


def test_good_spec_loads(tmp_path: Path) -> None:
    spec = hatcli.load_spec(write_spec(tmp_path, GOOD))
    assert spec.stage_names == ["float"]
    assert spec.stage("float").get("model") == {"type": "DigitsNet", "num_classes": 10}


def test_every_problem_is_reported_sorted_by_position(tmp_path: Path) -> None:
    text = GOOD.replace("num_epochs: 1", "num_epochs: -1").replace("DigitsNet,", "Digitz,")
    text = text.replace("batch_size: 64", "batch_size: 0")
    with pytest.raises(SpecError) as info:
        hatcli.load_spec(write_spec(tmp_path, text))
    lines = [p.line for p in info.value.problems]
    assert lines == [4, 6, 12]


def test_aliases_and_interpolation(tmp_path: Path) -> None:
    text = GOOD.replace('work_dir: "{work_dir_value}"', 'work_dir: "{work_dir_value}/{name}"')
    text += (
        "      - {type: Checkpoint, save_dir: '{work_dir}/{stage}/ckpt', name_prefix: '{{x}}'}\n"
    )
    text += "  qat:\n    model: *model\n    num_epochs: 0\n"
    spec = hatcli.load_spec(write_spec(tmp_path, text))
    assert spec.work_dir == tmp_path / "runs" / "digits"
    last = spec.stage("float").get("callbacks")[-1]
    assert last["save_dir"] == f"{tmp_path}/runs/digits/float/ckpt"
    assert last["name_prefix"] == "{x}"
    assert spec.stage("qat").get("model") == spec.stage("float").get("model")


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError) as info:
        hatcli.load_spec(path)
    assert f"more than {MAX_EXPANDED_NODES} nodes" in str(info.value)


def test_an_unquoted_date_is_a_string(tmp_path: Path) -> None:
    # YAML 1.2's core schema has no timestamps; ruamel would build a datetime.date.
    text = GOOD.replace("name: digits", "name: 2024-01-31")
    assert hatcli.load_spec(write_spec(tmp_path, text)).name == "2024-01-31"


def test_a_mapping_made_only_of_merges_loads(tmp_path: Path) -> None:
    text = GOOD.replace(
        "    optimizer: {type: SGD, lr: 0.1, momentum: 0.9}",
        "    optimizer: {<<: [*sgd]}",
    ).replace("name: digits", "name: digits\nx-sgd: &sgd {type: SGD, lr: 0.1}")
    spec = hatcli.load_spec(write_spec(tmp_path, text))
    assert spec.stage("float").get("optimizer") == {"type": "SGD", "lr": 0.1}


def test_any_bytes_give_data_or_a_spec_error(tmp_path: Path) -> None:
    pieces = [b"!!omap ", b"!!set ", b"!!pairs ", b"!!binary ", b"!!timestamp ", b"!!int "]
    pieces += [b"!!bool ", b"!!float ", b"!!map ", b"!!seq ", b"!!str ", b"!x ", b"&a ", b"*a"]
    pieces += [b"<<: ", b"? ", b"[", b"]", b"{", b"}", b",", b": ", b"- ", b"\n", b"  ", b"'"]
    pieces += [b'"', b"%YAML 1.1\n", b"---\n", b"\t", b"\xff", b"\x00", b"1e400", b"~", b"#"]
    rng = random.Random(0)
    path = tmp_path / "spec.yaml"
    for _ in range(300):
        data = bytearray(GOOD.encode())
        for _ in range(rng.randint(1, 6)):
            at = rng.randint(0, len(data))
            data[at:at] = rng.choice(pieces)
        path.write_bytes(data)
        try:
            load_yaml(path)
        except SpecError as exc:
            assert all(line.startswith(f"{path}:") for line in str(exc).splitlines())


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "the spec is empty"),
        ("- a\n- b\n", "must be a mapping, not a list"),
        ("just text\n", "must be a mapping, not a single value"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
    ],
)
def test_unusable_files(tmp_path: Path, content: str | bytes, fragment: str) -> None:
    path = tmp_path / "spec.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(SpecError) as info:
        hatcli.load_spec(path)
    assert str(info.value).startswith(f"{path}:1:1: ")
    assert fragment in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="file not found"):
        hatcli.load_spec(tmp_path / "nope.yaml")


def test_spec_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = GOOD + textwrap.dedent(f"""\
        x-evil: !!python/object/apply:os.system ["touch {marker}"]
        """)
    with pytest.raises(SpecError, match="not allowed"):
        hatcli.load_spec(write_spec(tmp_path, text))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        (
            "    num_epochs: 1",
            "    num_epochs: 1\n    loss: CrossEntropyLos",
            "unknown loss 'CrossEntropyLos'; did you mean 'CrossEntropyLoss'?",
        ),
        (
            "{type: CosineAnnealingLR}",
            "{type: CosineAnealingLR}",
            "unknown lr scheduler 'CosineAnealingLR'",
        ),
        ("{type: Validation}", "{type: Validaton}", "unknown callback 'Validaton'"),
        ("    num_epochs: 1", "    num_epochs: 1\n    trainer: {}", "which trainer to use"),
    ],
)
def test_an_unknown_component_is_named_by_its_kind_in_the_singular(
    tmp_path: Path, old: str, new: str, fragment: str
) -> None:
    path = write_spec(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        hatcli.load_spec(path)
    (line,) = [str(p) for p in info.value.problems]
    assert fragment in line


def test_stage_placeholders_in_a_shared_x_anchor_are_filled_where_it_is_used(
    tmp_path: Path,
) -> None:
    text = (Path(__file__).parents[1] / "examples" / "digits" / "spec.yaml").read_text()
    for stage in ("float", "qat"):
        old = f"      - {{type: Checkpoint, name_prefix: {stage}-, monitor_metric_key: accuracy"
        old += ", mode: max}"
        assert old in text
        text = text.replace(old, "      - *ckpt")
    text = text.replace(
        "stages:\n",
        "x-shared:\n  ckpt: &ckpt {type: Checkpoint, name_prefix: '{stage}-', "
        "monitor_metric_key: accuracy}\n\nstages:\n",
        1,
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    loaded = hatcli.load_spec(spec)
    assert loaded.data["stages"]["float"]["callbacks"][1]["name_prefix"] == "float-"
    assert loaded.data["stages"]["qat"]["callbacks"][1]["name_prefix"] == "qat-"


def test_save_traced_in_a_qat_stage_is_a_validation_error(tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "examples" / "digits" / "spec.yaml").read_text()
    old = "      - {type: Checkpoint, name_prefix: qat-, monitor_metric_key: accuracy, mode: max}"
    assert old in text
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace(old, old + "\n      - {type: SaveTraced}"))
    with pytest.raises(SpecError) as caught:
        hatcli.load_spec(spec)
    (problem,) = caught.value.problems
    assert problem.path == "stages.qat.callbacks[2]"
    assert "SaveTraced cannot trace a QAT model" in problem.message


@pytest.mark.parametrize(
    ("old", "new", "path", "fragment"),
    [
        (
            "      - {type: Validation, data: val}\n"
            "      - {type: Checkpoint, name_prefix: float-, monitor_metric_key: accuracy",
            "      - {type: Checkpoint, name_prefix: float-, monitor_metric_key: accuracy",
            "stages.float.callbacks[0].monitor_metric_key",
            "monitor_metric_key 'accuracy' needs a Validation callback in this stage",
        ),
        (
            "      - {type: Checkpoint, name_prefix: qat-,",
            "      - {type: FuseBN, modules: [[stem]], step_or_epoch: [1]}\n"
            "      - {type: Checkpoint, name_prefix: qat-,",
            "stages.qat.callbacks[1]",
            "FuseBN needs qat_mode with_bn or with_bn_reverse_fold (this stage uses fuse_bn",
        ),
    ],
    ids=["monitor-without-validation", "fusebn-under-fuse_bn"],
)
def test_what_fails_at_once_when_training_starts_fails_in_validate(
    tmp_path: Path, old: str, new: str, path: str, fragment: str
) -> None:
    text = (Path(__file__).parents[1] / "examples" / "digits" / "spec.yaml").read_text()
    assert old in text
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace(old, new, 1))
    with pytest.raises(SpecError) as caught:
        hatcli.load_spec(spec)
    (problem,) = caught.value.problems
    assert problem.path == path and fragment in problem.message
