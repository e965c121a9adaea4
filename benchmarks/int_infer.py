"""Inference throughput (images/s): float eval, hat's integer model, torch.ao's converted
model (x86/fbgemm engine), and hat's integer model exported to ONNX (QDQ, and integer
ops) run by ONNX Runtime; same inputs, batch 1/64/256.

    python -m benchmarks.int_infer --models ResNet18 MobileNetV2
    python -m benchmarks.int_infer --models ResNet18 --batch-sizes 64 --hat-paths fused \
        accumulator reference --no-onnx --threads 1 --profile

QAT models are prepared and run a few training steps on random data first, so observers
hold real ranges; timings are interleaved medians. ``identical`` is the fraction of
output elements equal to the hat integer model's (bit for bit) on the timed batch.
``--hat-paths`` adds hat's integer model in other kernel modes (``kernels.MODES``: the
first is ``hat-int8``, the others ``hat-int8[path]``); ``--profile`` prints the top ops of
one forward of ``hat-int8`` per model and batch (torch.profiler, self CPU time).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import onnx
import onnxruntime as ort
import torch
from torch import nn

from benchmarks.common import INPUT_SHAPES, build, table, write
from benchmarks.peers import convert_torch_ao, prepare_torch_ao_qat
from hatcli.export.onnx_integer import IntegerOpsBuilder
from hatcli.export.onnx_qdq import QDQBuilder
from hatcli.quant import convert, prepare_qat, set_qat_mode
from hatcli.quant.nn.quantized import kernels


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


def on_path(model: nn.Module, path: str) -> Callable:
    """``model`` with its integer convs on kernel path ``path``."""

    def run(x: torch.Tensor) -> torch.Tensor:
        kernels.select(path)
        return model(x)

    return run


def variants(
    model_name: str, hat_paths: list[str] | None = None, onnx_runtime: bool = True
) -> dict[str, Callable]:
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
    paths = hat_paths or [kernels.active_path()]
    models: dict[str, Callable] = {"float": float_model.eval()}
    for i, path in enumerate(paths):
        models["hat-int8" if i == 0 else f"hat-int8[{path}]"] = on_path(hat_int, path)
    models["torch.ao-fbgemm"] = ao_int
    if onnx_runtime:
        models["onnx-qdq-ort"] = onnx_runner(hat_int, QDQBuilder, shape)
        models["onnx-integer-ort"] = onnx_runner(hat_int, IntegerOpsBuilder, shape)
    return models


def profile(model: Callable, x: torch.Tensor, rows: int = 12) -> str:
    """The top ops of one forward by self CPU time (after a warm-up forward)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.no_grad():
        model(x)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    lines = [f"{'op':<44} {'calls':>6} {'self ms':>9} {'share':>6}"]
    for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:rows]:
        share = 100 * e.self_cpu_time_total / total
        ms = e.self_cpu_time_total / 1e3
        lines.append(f"{e.key[:44]:<44} {e.count:>6} {ms:>9.1f} {share:>5.1f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet18", "MobileNetV2"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--hat-paths",
        nargs="+",
        choices=kernels.MODES,
        help="kernel modes (default: the active one)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime variants")
    parser.add_argument("--profile", action="store_true", help="print hat-int8's top ops")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time by the thread's CPU time, not the wall clock (with --threads 1: steadier "
        "on a shared machine, where other jobs take turns on the cores)",
    )
    args = parser.parse_args()
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time needs --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    print(kernels.describe(), f"({torch.get_num_threads()} threads)", flush=True)
    rows = []
    for model_name in args.models:
        models = variants(model_name, args.hat_paths, not args.no_onnx)
        for batch in args.batch_sizes:
            x = torch.randn(batch, *INPUT_SHAPES[model_name])
            times: dict[str, list[float]] = {n: [] for n in models}
            with torch.no_grad():
                outputs = {name: model(x) for name, model in models.items()}
                for _ in range(args.rounds):
                    for name, model in models.items():
                        start = clock()
                        model(x)
                        times[name].append(clock() - start)
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
            if args.profile:
                print(f"{model_name}, batch {batch}: hat-int8's top ops")
                print(profile(models["hat-int8"], x), "\n", flush=True)
    print(f"written: {write('int_infer', rows)}")


if __name__ == "__main__":
    main()
