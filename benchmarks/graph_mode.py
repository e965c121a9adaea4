"""Graph-mode preparation (``hatcli.quant.graph.prepare``): QAT-vs-integer agreement next
to torch.ao's FX mode on the plain PyTorch models of ``tests/zoo``, and the QAT step time
of a graph-prepared model against the same model prepared in eager mode.

    python -m benchmarks.graph_mode --agreement --step-time --batch-sizes 32 --rounds 5

**Agreement** (``--agreement``; ``--models`` picks zoo models, default all). Each model is
built seeded and trained ``--float-steps`` float SGD steps on a synthetic task (labels
from a fixed random conv "teacher" of the input: the argmax of its pooled output for the
classifiers, of each pixel's for the segmentation models), so BN statistics and
activations hold trained ranges. Then, from the same float weights and on the same
batches:

- hat: ``prepare(model, "fuse_bn")``; integer = ``hatcli.quant.convert(copy)``;
- torch.ao: ``prepare_qat_fx`` with ``get_default_qat_qconfig_mapping(engine)`` (x86 by
  default); integer = ``convert_fx(copy)``;

each run ``--observer-batches`` batches in train mode without gradients, then
``--qat-steps`` QAT SGD steps, then eval (torch.ao's observers, which also run in eval
mode, are then disabled, so the held-out inputs do not move its scales). On
``--held-out`` fresh inputs the rows compare the QAT model in eval mode with its integer
model. hat's QAT eval computes with each module's integer twin
(``hatcli.quant.nn.qat.integer_eval``), so hat has two rows: ``hat`` (QAT eval as it
runs) and ``hat float-sim`` (the same model in ``float_simulation()``: the training
forward's float arithmetic, what torch.ao's QAT eval runs too). Columns:

- ``identical``: the fraction of output elements equal bit for bit;
- ``cosine``: cosine similarity of the two outputs, each flattened whole;
- ``max_steps`` (``mean_steps``): the largest (mean) |QAT - integer| in output
  quantization steps. The step is the scale of the integer model's last quantized value
  before its output (followed back through dequantization and reshaping): the per-tensor
  scale of an int8 output (``int8``; torch.ao's ``quint8``, 7-bit on x86 with its reduced
  range), or, for hat's int32 output of a final conv/linear, the scale of each output
  channel (input scale x that channel's weight scale; ``int32/ch``). Where the output is
  computed in float after the last dequantization (a float island), the step is that of
  an int8 tensor of the integer output's range, max|y| / 127.5 (``range``);
- ``max_diff/range``: max |QAT - integer| / max |integer output|, comparable across tools
  whatever the output's type;
- ``float_cosine``: cosine of the float model's output and the integer model's, for
  context (how much quantization itself changes the output).

A model that fails in a tool (tracing, preparation, conversion, running) gets a row with
the error and the run goes on.

**Step time** (``--step-time``; ``--step-models``, default ResNet18 and MobileNetV2, hat's
own models with ``fuse_model``/``set_qconfig``). For each qat_mode and batch size, from
one float model's weights: eager = ``fuse_model`` + ``set_qconfig`` + ``prepare_qat`` (as
``benchmarks.qat_step``), graph = ``prepare(model, mode)`` (which applies the model's own
``set_qconfig``). One train step (forward, backward, SGD) of each variant per round, in
interleaved rounds as ``benchmarks.qat_step`` times them; each is timed by the wall clock
and by the process's CPU time, and the row gives the medians and graph/eager for both
(goal: <= 1.05x, judged on ``--clock``). By default torch runs one thread (``--threads``)
and the goal is judged on CPU time: on a shared machine whose other processes take the
cores, one thread's CPU time per step stays within about 1% from step to step where its
wall time varies by 2-3x (and two threads spin-waiting on each other go slower still).
The modules table compares the two prepared models: the hat modules (QAT modules, stubs,
fake quantizers, observers) by dotted name and type, so a fusion the graph path misses
shows as extra or differently typed modules. Where graph/eager exceeds the goal (or with
``--profile``), one step of each is profiled: the profiler ops whose call counts differ,
and the Python functions and builtins with the most own time added in each mode
(cProfile on the same clock, per step).

The agreement part runs on the same ``--threads`` (the zoo's models are tiny: one thread
is fastest).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import os
import pstats
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import fx, nn

from benchmarks.common import INPUT_SHAPES, build, sgd_step, table, write
from hatcli.quant import QTensor, convert, float_simulation, prepare_qat, set_qat_mode
from hatcli.quant.graph import prepare

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")

MODES = ("fuse_bn", "with_bn", "with_bn_reverse_fold")
GOAL = 1.05
_SHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "contiguous"}
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}


# --- agreement ----------------------------------------------------------------------------


def zoo() -> tuple[dict[str, Callable[..., nn.Module]], frozenset[str], tuple[int, ...]]:
    from tests.zoo import INPUT_SHAPE, MODELS, SEGMENTATION

    return MODELS, SEGMENTATION, tuple(INPUT_SHAPE)


class Task:
    """A synthetic task a small model learns a little of in a few steps: labels are the
    argmax of a fixed random conv of the input, pooled over the image (classifiers) or
    per pixel (segmentation)."""

    def __init__(self, classes: int, segmentation: bool, shape: tuple[int, ...]) -> None:
        self.shape, self.segmentation = shape, segmentation
        g = torch.Generator().manual_seed(1234)
        self.teacher = torch.randn(classes, shape[0], 3, 3, generator=g)
        self.g = torch.Generator().manual_seed(4321)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, *self.shape, generator=self.g)
        logits = nn.functional.conv2d(x, self.teacher, padding=1)
        if self.segmentation:
            return x, logits.argmax(1)
        return x, logits.mean((2, 3)).argmax(1)


def sgd_steps(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float
) -> None:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def observe(model: nn.Module, xs: list[torch.Tensor]) -> None:
    model.train()
    with torch.no_grad():
        for x in xs:
            model(x)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(nn.functional.cosine_similarity(a, b, dim=0))


def _is_quantized(value: Any) -> bool:
    return isinstance(value, QTensor) or (isinstance(value, torch.Tensor) and value.is_quantized)


def _passes_value(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` only dequantizes or reshapes its one tensor input."""
    if node.op == "call_method":
        return node.target == "dequantize" or node.target in _SHAPE_METHODS
    if node.op == "call_function":
        return node.target in _SHAPE_FUNCTIONS or node.target is torch.dequantize
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))).__name__ in ("DeQuantStub", "Flatten")
    return False


def _step_of(value: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The quantization step of each element of a quantized value, and its kind."""
    if isinstance(value, QTensor):
        scale, axis = value.q_scale.double(), value.q_axis
        kind = "int8" if value.int_repr().dtype == torch.int8 else "int32"
    elif value.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        scale, axis = torch.tensor(value.q_scale(), dtype=torch.float64), None
        kind = str(value.dtype).removeprefix("torch.")
    else:
        scale, axis = value.q_per_channel_scales().double(), value.q_per_channel_axis()
        kind = str(value.dtype).removeprefix("torch.")
    if axis is None:
        return scale.expand(value.shape), kind
    view = [1] * value.dim()
    view[axis] = -1
    return scale.view(view).expand(value.shape), f"{kind}/ch"


def integer_run(gm: fx.GraphModule, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The integer GraphModule's output on ``x``, each output element's quantization
    step, and the step's kind (see the module docstring)."""
    values: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            values[n] = super().run_node(n)
            return values[n]

    with torch.no_grad():
        out = Recorder(gm, garbage_collect_values=False).run(x)
    node = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    while isinstance(node, fx.Node):
        value = values[node]
        if _is_quantized(value):
            step, kind = _step_of(value)
            if step.shape != out.shape:
                step = step.reshape(out.shape)  # reached through view/flatten/reshape only
            return out, step, kind
        inputs = [a for a in node.all_input_nodes if isinstance(values.get(a), torch.Tensor)]
        if len(inputs) != 1 or not _passes_value(gm, node):
            break
        node = inputs[0]
    return out, (out.abs().max().double() / 127.5).expand(out.shape), "range"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """GraphModule prints the failing line of its generated code to stderr: the row
    reports the error already."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """The profiler's start/stop lines go to file descriptor 2 from C++."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def hat_convert(qat: nn.Module) -> nn.Module:
    return convert(copy.deepcopy(qat))


def ao_prepare(model: nn.Module, example: torch.Tensor, engine: str) -> nn.Module:
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    torch.backends.quantized.engine = engine
    qat: nn.Module = prepare_qat_fx(
        copy.deepcopy(model).train(), get_default_qat_qconfig_mapping(engine), (example,)
    )
    return qat


def ao_convert(qat: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    integer: nn.Module = convert_fx(copy.deepcopy(qat).eval())
    return integer


def _compare(
    row: dict[str, Any],
    qat_out: torch.Tensor,
    int_out: torch.Tensor,
    step: torch.Tensor,
    kind: str,
    float_out: torch.Tensor,
) -> dict[str, Any]:
    diff = (qat_out.double() - int_out.double()).abs()
    return {
        **row,
        "identical": round(float((qat_out == int_out).double().mean()), 4),
        "cosine": round(cosine(qat_out, int_out), 6),
        "max_steps": round(float((diff / step).max()), 2),
        "mean_steps": round(float((diff / step).mean()), 3),
        "step": kind,
        "max_diff/range": round(float(diff.max() / int_out.double().abs().max()), 5),
        "float_cosine": round(cosine(float_out, int_out), 4),
    }


def agreement_rows(
    name: str,
    tool: str,
    float_model: nn.Module,
    calib: list[torch.Tensor],
    qat_batches: list[tuple[torch.Tensor, torch.Tensor]],
    held_out: torch.Tensor,
    float_out: torch.Tensor,
    engine: str,
) -> list[dict[str, Any]]:
    """hat: a row for its QAT eval (integer twins) and one for its float simulation
    (``float_simulation()``, the training forward's arithmetic, as torch.ao's QAT eval
    is); torch.ao: one row."""
    row: dict[str, Any] = {"model": name, "tool": tool}
    stage = "prepare"
    start = time.perf_counter()
    try:
        with _quiet():
            if tool == "hat":
                qat = prepare(float_model, "fuse_bn")
            else:
                qat = ao_prepare(float_model, held_out[:2], engine)
            stage = "observe"
            observe(qat, calib)
            stage = "QAT steps"
            sgd_steps(qat, qat_batches, lr=1e-3)
            qat.eval()
            if tool != "hat":  # torch.ao's observers also run in eval mode: freeze them
                from torch.ao.quantization import disable_observer

                qat.apply(disable_observer)
            stage = "QAT eval"
            with torch.no_grad():
                qat_out = qat(held_out)
                if tool == "hat":
                    with float_simulation():
                        sim_out = qat(held_out)
            stage = "convert"
            integer = hat_convert(qat) if tool == "hat" else ao_convert(qat)
            stage = "integer run"
            assert isinstance(integer, fx.GraphModule)
            int_out, step, kind = integer_run(integer, held_out)
    except Exception as exc:  # one model's failure is its row, not the run's end
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        row["error"] = f"{stage}: {type(exc).__name__}: {message}"[:160]
        row["seconds"] = round(time.perf_counter() - start, 1)
        return [row]
    rows = [_compare(row, qat_out, int_out, step, kind, float_out)]
    if tool == "hat":
        sim_row = {"model": name, "tool": "hat float-sim"}
        rows.append(_compare(sim_row, sim_out, int_out, step, kind, float_out))
    rows[0]["seconds"] = round(time.perf_counter() - start, 1)
    return rows


def agreement(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        models, segmentation, shape = zoo()
    except Exception as exc:  # the zoo is being written: say so, go on to the step times
        rows.append({"model": "tests.zoo", "tool": "-", "error": f"{type(exc).__name__}: {exc}"})
        print(table(rows, ["model", "tool", "error"]))
        return rows
    names = args.models or list(models)
    columns = ["model", "tool", "identical", "cosine", "max_steps", "mean_steps", "step"]
    columns += ["max_diff/range", "float_cosine"]
    columns += ["seconds", "error"]
    for name in names:
        if name not in models:
            rows.append({"model": name, "tool": "-", "error": f"not in tests/zoo: {list(models)}"})
            continue
        seg = name in segmentation
        classes = 4 if seg else 10
        task = Task(classes, seg, shape)
        try:
            torch.manual_seed(0)
            float_model = models[name](num_classes=classes)
            sgd_steps(
                float_model, [task.batch(args.train_batch) for _ in range(args.float_steps)], 0.02
            )
            float_model.eval()
        except Exception as exc:
            rows.append({"model": name, "tool": "float", "error": f"{type(exc).__name__}: {exc}"})
            print(table(rows[-1:], columns), flush=True)
            continue
        calib = [task.batch(args.train_batch)[0] for _ in range(args.observer_batches)]
        qat_batches = [task.batch(args.train_batch) for _ in range(args.qat_steps)]
        held_out = task.batch(args.held_out)[0]
        with torch.no_grad():
            float_out = float_model(held_out)
        first = len(rows)
        for tool in ("hat", "torch.ao"):
            rows += agreement_rows(
                name, tool, float_model, calib, qat_batches, held_out, float_out, args.engine
            )
        print(table(rows[first:], columns), flush=True)
        print()
    print("QAT (eval) vs integer, and float vs integer, on held-out inputs:")
    print(table(rows, columns))
    print()
    return rows


# --- step time ----------------------------------------------------------------------------


def eager_prepared(base: nn.Module, mode: str) -> nn.Module:
    model = copy.deepcopy(base).train()
    set_qat_mode(mode)
    model.fuse_model()  # type: ignore[operator]
    model.set_qconfig()  # type: ignore[operator]
    return prepare_qat(model, mode).train()


def graph_prepared(base: nn.Module, mode: str) -> nn.Module:
    set_qat_mode(mode)
    return prepare(copy.deepcopy(base).train(), mode).train()


def hat_modules(model: nn.Module) -> dict[str, str]:
    """Dotted name -> type of every hat module (QAT modules, stubs, fake quantizers,
    observers) in a prepared model."""
    return {
        name: type(m).__name__
        for name, m in model.named_modules()
        if type(m).__module__.startswith("hatcli.quant")
    }


def _counts(types: Counter[str]) -> str:
    return ", ".join(f"{t} x{n}" if n > 1 else t for t, n in sorted(types.items())) or "-"


def compare_modules(model_name: str, mode: str, eager: nn.Module, graph: nn.Module) -> dict:
    e, g = hat_modules(eager), hat_modules(graph)
    only_e = {k: v for k, v in e.items() if k not in g}
    only_g = {k: v for k, v in g.items() if k not in e}
    retyped = sorted(f"{k}: {e[k]} -> {g[k]}" for k in e.keys() & g.keys() if e[k] != g[k])
    type_diff_e = Counter(e.values()) - Counter(g.values())
    type_diff_g = Counter(g.values()) - Counter(e.values())
    return {
        "model": model_name,
        "mode": mode,
        "eager_modules": len(e),
        "graph_modules": len(g),
        "extra_types_eager": _counts(type_diff_e),
        "extra_types_graph": _counts(type_diff_g),
        "names_only_eager": ", ".join(sorted(only_e)[:6]) or "-",
        "names_only_graph": ", ".join(sorted(only_g)[:6]) or "-",
        "retyped": "; ".join(retyped[:6]) or "-",
    }


def op_counts(step: Callable[[], None]) -> Counter[str]:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return Counter({e.key: e.count for e in prof.key_averages()})


def python_times(step: Callable[[], None], clock: str, steps: int = 2) -> dict[str, float]:
    """Own time per step (s) of each Python function and builtin, by cProfile on
    ``clock``."""
    profiler = cProfile.Profile(time.process_time if clock == "cpu" else time.perf_counter)
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    times: dict[str, float] = {}
    for (file, line, func), (_, _, tottime, _, _) in stats.items():
        if file.startswith("<eval_with_key>"):
            key = "the GraphModule's generated forward"
        elif file == "~":
            key = func
        else:
            key = f"{'/'.join(file.rsplit('/', 2)[-2:])}:{line}({func})"
        times[key] = times.get(key, 0.0) + tottime / steps
    return times


def profile_pair(
    eager_step: Callable[[], None], graph_step: Callable[[], None], clock: str
) -> list[str]:
    lines = []
    ce, cg = op_counts(eager_step), op_counts(graph_step)
    changed = sorted(k for k in ce.keys() | cg.keys() if ce[k] != cg[k])
    if changed:
        lines.append("  profiler ops whose call counts differ in one step (eager -> graph):")
        lines += [f"    {k}: {ce[k]} -> {cg[k]}" for k in changed[:20]]
    else:
        lines.append(f"  the same {len(ce)} profiler ops with the same call counts in one step")
    te, tg = python_times(eager_step, clock), python_times(graph_step, clock)
    extra = sorted((tg.get(k, 0.0) - te.get(k, 0.0), k) for k in te.keys() | tg.keys())
    lines.append(
        f"  cProfile ({clock} s per step): eager {sum(te.values()):.3f}, "
        f"graph {sum(tg.values()):.3f}; most own time added in graph mode:"
    )
    lines += [f"    {d * 1000:+8.2f} ms  {k}" for d, k in reversed(extra[-6:]) if d > 0]
    lines.append("  most own time added in eager mode:")
    lines += [f"    {-d * 1000:+8.2f} ms  {k}" for d, k in extra[:4] if d < 0]
    return lines


def timed(step: Callable[[], None]) -> tuple[float, float]:
    """One call's wall and process CPU time (s)."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def step_time(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    module_rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for model_name in args.step_models:
        shape = INPUT_SHAPES[model_name]
        torch.manual_seed(0)
        base = build(model_name)
        models: dict[tuple[str, str], nn.Module] = {}
        for mode in args.modes:
            models[mode, "eager"] = eager_prepared(base, mode)
            models[mode, "graph"] = graph_prepared(base, mode)
            module_rows.append(
                compare_modules(model_name, mode, models[mode, "eager"], models[mode, "graph"])
            )
        for batch in args.batch_sizes:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(batch, *shape, generator=g)
            y = torch.randint(0, 10, (batch,), generator=g)
            steps = {k: sgd_step(m, x, y) for k, m in models.items()}
            wall: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
            cpu: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
            for _ in range(args.rounds):
                for k, step in steps.items():
                    w, c = timed(step)
                    wall[k].append(w)
                    cpu[k].append(c)
            for mode in args.modes:
                e, gr = (mode, "eager"), (mode, "graph")
                wall_ratio = _median(wall[gr]) / _median(wall[e])
                cpu_ratio = _median(cpu[gr]) / _median(cpu[e])
                ratio = cpu_ratio if args.clock == "cpu" else wall_ratio
                rows.append(
                    {
                        "model": model_name,
                        "batch": batch,
                        "mode": mode,
                        "eager_ms": round(_median(wall[e]) * 1000, 1),
                        "graph_ms": round(_median(wall[gr]) * 1000, 1),
                        "wall_ratio": round(wall_ratio, 3),
                        "eager_cpu_ms": round(_median(cpu[e]) * 1000, 1),
                        "graph_cpu_ms": round(_median(cpu[gr]) * 1000, 1),
                        "cpu_ratio": round(cpu_ratio, 3),
                        f"goal ({args.clock})": "met" if ratio <= GOAL else "NOT met",
                    }
                )
                if args.profile or ratio > GOAL:
                    notes.append(
                        f"{model_name} batch {batch} {mode}: graph/eager {ratio:.3f} ({args.clock})"
                    )
                    notes += profile_pair(steps[e], steps[gr], args.clock)
            print(table(rows[-len(args.modes) :], list(rows[-1])), flush=True)
            print()
            del steps
        del models
    print(
        "QAT train step, graph-prepared vs eager-prepared (ms, medians of interleaved rounds;"
        " wall and process CPU time):"
    )
    print(table(rows, list(rows[0])) if rows else "(none)")
    print()
    print("Prepared models compared (hat modules by dotted name and type):")
    print(table(module_rows, list(module_rows[0])) if module_rows else "(none)")
    print()
    if notes:
        print("Profiles:")
        print("\n".join(notes))
        print()
    for row in module_rows:
        row["kind"] = "modules"
    return rows, [*module_rows, {"kind": "profile", "lines": notes}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agreement", action="store_true", help="run part 1 (default: both)")
    parser.add_argument("--step-time", action="store_true", help="run part 2 (default: both)")
    parser.add_argument("--models", nargs="+", help="tests/zoo models (default: all)")
    parser.add_argument("--engine", default="x86", choices=["x86", "fbgemm"])
    parser.add_argument("--float-steps", type=int, default=20)
    parser.add_argument("--observer-batches", type=int, default=10)
    parser.add_argument("--qat-steps", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--step-models", nargs="+", default=["ResNet18", "MobileNetV2"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="profile even where met")
    parser.add_argument(
        "--clock", default="cpu", choices=["cpu", "wall"], help="the time the goal is judged on"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    both = not (args.agreement or args.step_time)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    if args.agreement or both:
        rows += [{"kind": "agreement", **r} for r in agreement(args)]
    if args.step_time or both:
        timed, extra = step_time(args)
        rows += [{"kind": "step_time", **r} for r in timed] + extra
    print(f"written: {write('graph_mode', rows)} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
