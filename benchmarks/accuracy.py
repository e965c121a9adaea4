"""The bundled example's float / QAT / integer accuracy for each qat_mode, next to the same
model through torch.ao's eager QAT + convert.

    python -m benchmarks.accuracy
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

import hatcli
from benchmarks.common import table, write
from benchmarks.peers import convert_torch_ao, prepare_torch_ao_qat
from hatcli.engine.stage import run_stage

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits" / "spec.yaml"
MODES = ("fuse_bn", "with_bn", "with_bn_reverse_fold")


def accuracy(model: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def torch_ao_row(spec: hatcli.Spec, work: Path) -> dict[str, object]:
    """torch.ao eager QAT from the same float weights, trained like the qat stage."""
    float_model = hatcli.build_model(spec, "float")
    best = torch.load(work / "float-checkpoint-best.pth.tar", weights_only=True)
    float_model.load_state_dict(best["state_dict"])
    qat = prepare_torch_ao_qat(copy.deepcopy(float_model))
    train = hatcli.build_data_loader(spec, "train")
    with torch.no_grad():  # calibration, as the hat pipeline does
        for step, (x, _) in enumerate(train):
            qat(x)
            if step == 19:
                break
    optimizer = torch.optim.SGD(qat.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    epochs = spec.stage("qat").get("num_epochs")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for epoch in range(epochs):
        train.sampler.set_epoch(epoch)
        qat.train()
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(qat(x), y).backward()
            optimizer.step()
        scheduler.step()
    val = hatcli.build_data_loader(spec, "val")
    return {
        "pipeline": "torch.ao eager (x86)",
        "float": round(accuracy(float_model, val), 4),
        "qat": round(accuracy(qat, val), 4),
        "int8": round(accuracy(convert_torch_ao(qat), val), 4),
    }


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            work = Path(tmp) / mode
            text = EXAMPLE.read_text().replace(
                "qat_mode: &qat_mode fuse_bn", f"qat_mode: &qat_mode {mode}"
            )
            path = Path(tmp) / f"{mode}.yaml"
            path.write_text(text)
            spec = hatcli.load_spec(path, work_dir=work)
            results = {s: run_stage(spec, s)["metrics"]["accuracy"] for s in spec.stage_names}
            # The float weights QAT starts from: the best float checkpoint.
            best = torch.load(work / "float-checkpoint-best.pth.tar", weights_only=True)
            results["float"] = best["best"]["value"]
            rows.append(
                {
                    "pipeline": f"hat {mode}",
                    "float": round(results["float"], 4),
                    "qat": round(results["qat"], 4),
                    "int8": round(results["int_infer"], 4),
                }
            )
            print(table(rows, list(rows[0])), flush=True)
        rows.append(torch_ao_row(spec, work))
    print(table(rows, list(rows[0])))
    print(f"written: {write('accuracy', rows)}")


if __name__ == "__main__":
    main()
