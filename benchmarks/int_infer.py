"""Inference throughput (images/s): float eval, hat's integer model, torch.ao's converted
model (x86/fbgemm engine), and hat's integer model exported to ONNX (QDQ, and integer
ops) run by ONNX Runtime; same inputs, batch 1/64/256.

    python -m benchmarks.int_infer --models ResNet18 MobileNetV2

QAT models are prepared and run a few training steps on random data first, so observers
hold real ranges; timings are interleaved medians. ``identical`` is the fraction of
output elements equal to the hat integer model's (bit for bit) on the timed batch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import onnx
import onnxruntime as ort
import torch
from torch import nn

from benchmarks.common import INPUT_SHAPES, build, median_time, table, write
from benchmarks.peers import convert_torch_ao, prepare_torch_ao_qat
from hatcli.export.onnx_integer import IntegerOpsBuilder
from hatcli.export.onnx_qdq import QDQBuilder
from hatcli.quant import convert, prepare_qat, set_qat_mode


def calibrated(model: nn.Module, shape: tuple[int, ...], steps: int = 3) -> nn.Module:
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(32, *shape))
    return model.eval()


def onnx_runner(integer: nn.Module, builder: type, shape: tuple[int, ...]) -> Callable:
    """The integer model as an ONNX graph in an ONNX Runtime session (threads as torch)."""
    proto, _ = builder(integer, onnx).build(torch.zeros(2, *shape))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def variants(model_name: str) -> dict[str, Callable]:
    shape = INPUT_SHAPES[model_name]
    float_model = build(model_name)
    calibrated(float_model, shape)  # BN statistics
    hat = build(model_name)
    hat.load_state_dict(float_model.state_dict())
    set_qat_mode("fuse_bn")
    hat.eval()
    hat.fuse_model()
    hat.set_qconfig()
    hat_int = convert(calibrated(prepare_qat(hat, "fuse_bn"), shape))
    ao = prepare_torch_ao_qat(float_model)
    ao_int = convert_torch_ao(calibrated(ao, shape))
    return {
        "float": float_model.eval(),
        "hat-int8": hat_int,
        "torch.ao-fbgemm": ao_int,
        "onnx-qdq-ort": onnx_runner(hat_int, QDQBuilder, shape),
        "onnx-integer-ort": onnx_runner(hat_int, IntegerOpsBuilder, shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet18", "MobileNetV2"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for model_name in args.models:
        models = variants(model_name)
        for batch in args.batch_sizes:
            x = torch.randn(batch, *INPUT_SHAPES[model_name])
            times: dict[str, list[float]] = {n: [] for n in models}
            with torch.no_grad():
                outputs = {name: model(x) for name, model in models.items()}
                for _ in range(args.rounds):
                    for name, model in models.items():
                        times[name].append(median_time(lambda m=model, x=x: m(x), 1))
            median = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
            for name in models:
                rows.append(
                    {
                        "model": model_name,
                        "batch": batch,
                        "variant": name,
                        "images_per_s": round(batch / median[name], 1),
                        "x_float": round(median["float"] / median[name], 2),
                        "x_torch.ao": round(median["torch.ao-fbgemm"] / median[name], 2),
                        "identical": round(
                            float((outputs[name] == outputs["hat-int8"]).double().mean()), 4
                        ),
                    }
                )
            print(table(rows[-len(models) :], list(rows[-1])), flush=True)
            print()
    print(f"written: {write('int_infer', rows)}")


if __name__ == "__main__":
    main()
