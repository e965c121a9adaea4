"""The ``hat`` command line: validate, train, plugins, schema (and plugin commands)."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperArgument

from hatcli import plugins
from hatcli.engine.distributed import lost_a_peer
from hatcli.engine.interrupt import Interrupted
from hatcli.engine.launch import LAUNCHED_BY_HAT, Launch, check_launch, run_workers
from hatcli.engine.work_dir_lock import locked_stages
from hatcli.errors import HatError, InputError, PluginError, RunError, SpecError, one_line

app = typer.Typer(
    name="hat",
    help="Quantization-aware training for int8 fixed-point accelerators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help, as git and pip print it
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SpecArg = Annotated[
    Path, typer.Argument(help="The project's YAML spec.", show_default=False, metavar="SPEC")
]
# A flag takes no value: metavar "" keeps help from showing one.
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", metavar="")]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Tracebacks for run failures; the table of quantized ops.",
        metavar="",
    ),
]
WorkDirOpt = Annotated[
    str | None,  # not Path: Path("") would be ".", and '' must be refused as in a spec
    typer.Option("--work-dir", help="Override the spec's work_dir.", metavar="DIR"),
]
StageOpt = Annotated[
    str,
    typer.Option(
        "--stage",
        "-s",
        help="A stage of SPEC (the example's: float, calibration, qat, int_infer), or all "
        "to run every stage in order.",
        metavar="STAGE",
    ),
]


def _is_main_process() -> bool:
    """Under a launcher only rank 0 reports, so an error shows once, not once per rank."""
    return os.environ.get("RANK", "0") == "0"


LOST_PEER_GRACE_S = 5.0


class _LostPeer(typer.Exit):
    """A worker's collective failed because another worker died first."""


def _fail(lines: list[str], code: int, lost_peer: bool = False) -> None:
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file and lines:
        # The launcher reads this file and reports the first failing worker's message.
        record = {"message": lines[0], "timestamp": int(time.time())}
        Path(error_file).write_text(json.dumps(record))
    if _is_main_process() and not os.environ.get(LAUNCHED_BY_HAT):
        for line in lines:
            err.print(line, markup=False)
    raise (_LostPeer if lost_peer else typer.Exit)(code)


def _guard(action: Callable[[], Any], verbose: bool = False) -> Any:
    """Run ``action``; turn hat's errors into one-line messages and exit codes."""
    try:
        return action()
    except SpecError as exc:
        _fail([str(p) for p in exc.problems], 2)
    except (InputError, PluginError) as exc:
        _fail([f"error: {one_line(exc)}"], 2)
    except Interrupted as exc:
        _fail([f"interrupted: {exc}"], exc.exit_code)
    except RunError as exc:
        if verbose:
            traceback.print_exc()
        _fail([f"run failed: {exc}"], 1)
    except HatError as exc:
        _fail([f"error: {exc}"], 1)
    except KeyboardInterrupt:
        _fail(["interrupted"], 130)
    except SystemExit as exc:
        # Raised by user code (a model, a dataset, a plugin): the stage did not finish.
        _fail([f"run failed: the run called sys.exit({exc.code!r}) before it finished"], 1)
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (--verbose for the traceback)"
        lost_peer = lost_a_peer(exc)
        _fail([f"run failed: {type(exc).__name__}: {one_line(exc)}{hint}"], 1, lost_peer)


@app.command(short_help="Check SPEC against the schema and the installed components.")
def validate(spec: SpecArg) -> None:
    """Check SPEC against the schema and the installed components; exit 2 on any problem."""
    from hatcli.spec.spec import load_spec

    loaded = _guard(lambda: load_spec(spec))
    stages = ", ".join(loaded.stage_names)
    err.print(f"{spec}: ok ({stages})", markup=False)


NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc",
        help="Worker processes on this machine (torch's elastic launcher).",
        metavar="N",
    ),
]
NnodesOpt = Annotated[int, typer.Option("--nnodes", help="Machines taking part.", metavar="N")]
NodeRankOpt = Annotated[int, typer.Option("--node-rank", help="This machine's index.", metavar="N")]
MasterAddrOpt = Annotated[
    str, typer.Option("--master-addr", help="Address of node rank 0.", metavar="HOST")
]
MasterPortOpt = Annotated[
    int | None, typer.Option("--master-port", help="Its port.", metavar="PORT")
]
RdzvOpt = Annotated[
    str | None,
    typer.Option(
        "--rdzv-endpoint", help="A c10d rendezvous instead of a master.", metavar="HOST:PORT"
    ),
]


def _launch_or_run(launch: Launch, command: str, kwargs: dict[str, Any]) -> None:
    _guard(lambda: check_launch(launch))
    if launch.nproc == 1 and launch.nnodes == 1:
        _COMMANDS[command](**kwargs)
        return
    from hatcli.spec.spec import load_spec

    # Spec problems are reported here, all of them, before any worker starts.
    loaded = _guard(lambda: load_spec(kwargs["spec"], work_dir=kwargs["work_dir"]))
    stage = kwargs["stage"]
    stages = loaded.stage_names if stage == "all" else [stage]

    def launch_locked() -> int:
        with locked_stages(loaded.work_dir, [s for s in stages if s in loaded.stage_names]):
            return run_workers(launch, worker_main, command, kwargs)

    raise typer.Exit(_guard(launch_locked))


def worker_main(command: str, kwargs: dict[str, Any]) -> None:
    """What each launched worker runs: the same command, in one process of the group."""
    from hatcli.engine.distributed import destroy_process_group

    warnings.formatwarning = _format_warning
    try:
        _COMMANDS[command](**kwargs)
    except _LostPeer as exc:
        # The launcher reports the first worker it sees exit. Wait for it to see the
        # one that failed first and stop this one; then leave without tearing down the
        # broken group, which can abort the process (gloo's threads are mid-transfer).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(LOST_PEER_GRACE_S)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    finally:
        destroy_process_group()


def _train(spec: Path, stage: str, work_dir: str | None, quiet: bool, verbose: bool) -> None:
    from hatcli.engine.stage import run_stage
    from hatcli.spec.spec import load_spec

    loaded = _guard(lambda: load_spec(spec, work_dir=work_dir))
    names = loaded.stage_names if stage == "all" else [stage]
    if stage != "all" and stage not in loaded.stage_names:
        known = ", ".join([*loaded.stage_names, "all"])
        _fail([f"error: --stage: no stage {stage!r} in {spec}; choose from: {known}"], 2)
    for name in names:
        run = functools.partial(run_stage, loaded, name, quiet=quiet, verbose=verbose)
        summary = _guard(run, verbose)
        if not quiet and _is_main_process():
            _print_done(name, summary)


def _resume(
    spec: Path,
    stage: str,
    from_path: Path | None,
    work_dir: str | None,
    quiet: bool,
    verbose: bool,
) -> None:
    from hatcli.engine.distributed import launched_world_size
    from hatcli.engine.resume import find_resume_point
    from hatcli.engine.stage import run_stage
    from hatcli.spec.spec import load_spec

    loaded = _guard(lambda: load_spec(spec, work_dir=work_dir))
    if stage not in loaded.stage_names:
        known = ", ".join(loaded.stage_names)
        _fail([f"error: --stage: no stage {stage!r} in {spec}; choose from: {known}"], 2)

    def warn(message: str) -> None:
        if _is_main_process():
            err.print(f"warning: {message}", markup=False)

    world = launched_world_size()
    point = _guard(lambda: find_resume_point(loaded, stage, from_path, warn, world))
    if point.finished:
        if _is_main_process():
            err.print(f"stage {stage!r} already finished ({point.position}); nothing to do")
        return
    if not quiet and _is_main_process():
        err.print(f"[{stage}] resuming from {point.path} ({point.position})", markup=False)
    summary = _guard(
        lambda: run_stage(loaded, stage, quiet=quiet, resume=point, verbose=verbose), verbose
    )
    if not quiet and _is_main_process():
        _print_done(stage, summary)


_COMMANDS: dict[str, Callable[..., None]] = {"train": _train, "resume": _resume}


@app.command(short_help="Run one stage of SPEC, or all of them.")
def train(
    spec: SpecArg,
    stage: StageOpt,
    work_dir: WorkDirOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    nproc: NprocOpt = 1,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    master_addr: MasterAddrOpt = "127.0.0.1",
    master_port: MasterPortOpt = None,
    rdzv_endpoint: RdzvOpt = None,
) -> None:
    """Run one stage of SPEC (or every stage in order with --stage all)."""
    launch = Launch(nproc, nnodes, node_rank, master_addr, master_port, rdzv_endpoint)
    _launch_or_run(
        launch,
        "train",
        {"spec": spec, "stage": stage, "work_dir": work_dir, "quiet": quiet, "verbose": verbose},
    )


def _print_done(stage: str, summary: dict[str, Any]) -> None:
    metrics = " ".join(f"{k}={v:.4f}" for k, v in summary["metrics"].items())
    err.print(
        f"[{stage}] done: {summary['epochs']} epochs, {summary['steps']} steps, "
        f"{summary['wall_time_s']:.1f}s {metrics}".rstrip(),
        markup=False,
    )


@app.command(short_help="Continue an interrupted stage where its last checkpoint left it.")
def resume(
    spec: SpecArg,
    stage: Annotated[
        str, typer.Option("--stage", "-s", help="The stage to continue.", metavar="STAGE")
    ],
    from_path: Annotated[
        Path | None,
        typer.Option("--from", help="Continue from this checkpoint instead.", metavar="PATH"),
    ] = None,
    work_dir: WorkDirOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    nproc: NprocOpt = 1,
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    master_addr: MasterAddrOpt = "127.0.0.1",
    master_port: MasterPortOpt = None,
    rdzv_endpoint: RdzvOpt = None,
) -> None:
    """Continue an interrupted stage exactly where its last checkpoint left it."""
    launch = Launch(nproc, nnodes, node_rank, master_addr, master_port, rdzv_endpoint)
    kwargs = {"spec": spec, "stage": stage, "from_path": from_path, "work_dir": work_dir}
    _launch_or_run(launch, "resume", {**kwargs, "quiet": quiet, "verbose": verbose})


@app.command(short_help="Export a trained stage's model (ONNX, integer ONNX, TorchScript).")
def export(
    spec: SpecArg,
    stage: Annotated[
        str,
        typer.Option("--stage", "-s", help="The stage whose model to export.", metavar="STAGE"),
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="An installed export format; formats come from plugins ('hat plugins' "
            "lists them). Built in: onnx (QDQ when quantized), onnx-integer (integer ops, "
            "exact), torchscript.",
            show_default=False,
            metavar="FORMAT",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Default: {work_dir}/{stage} and the format's suffix ({stage}.onnx, "
            "{stage}-integer.onnx, {stage}-exported.pt for the built-in formats).",
            metavar="PATH",
        ),
    ] = None,
    work_dir: WorkDirOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace an existing output file (never an input).", metavar=""
        ),
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Export a trained stage's model in a format from a plugin (built in: ONNX, QDQ int8
    or integer ops when quantized; TorchScript) and check the file against the model on
    the stage's 'val' data."""
    from hatcli.export.stage import export_stage, formats
    from hatcli.spec.spec import load_spec

    installed = _guard(formats)
    if fmt not in installed:
        known = ", ".join(installed) or "(none installed)"
        _fail([f"error: --format: {fmt!r} is not one of: {known}"], 2)
    loaded = _guard(lambda: load_spec(spec, work_dir=work_dir))
    if stage not in loaded.stage_names:
        known = ", ".join(loaded.stage_names)
        _fail([f"error: --stage: no stage {stage!r} in {spec}; choose from: {known}"], 2)
    result = _guard(lambda: export_stage(loaded, stage, fmt, output, force=force), verbose)
    for line in result.lines():
        err.print(line, markup=False)
    if result.kind == "integer":  # what the integer model it was checked against ran on
        from hatcli.quant.nn.quantized.kernels import describe

        err.print(f"[{stage}] {describe()}", markup=False)


@app.command(short_help="Find the layers that cost accuracy; a report and what to change.")
def analyze(
    spec: SpecArg,
    stage: Annotated[
        str,
        typer.Option(
            "--stage", "-s", help="A calibration, qat or int_infer stage.", metavar="STAGE"
        ),
    ],
    batches: Annotated[
        int | None,
        typer.Option(
            "--batches",
            "-n",
            help="Batches of the 'val' split [default: up to 2048 samples, or all of it].",
            show_default=False,
            metavar="N",
        ),
    ] = None,
    no_sensitivity: Annotated[
        bool,
        typer.Option("--no-sensitivity", help="Skip the per-layer metric passes.", metavar=""),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Default: {work_dir}/analysis/{stage}.", metavar="DIR"),
    ] = None,
    work_dir: WorkDirOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Measure a quantized stage's model layer by layer (float, QAT and integer; the
    validation metric's sensitivity to each layer), write an HTML report, and print a
    qconfig rule for each of the five worst layers."""
    from hatcli.analyze import (
        analyze_stage,
        output_folder,
        require_plotting,
        summary_lines,
        write_outputs,
    )
    from hatcli.analyze.progress import progress_bar
    from hatcli.spec.spec import load_spec

    _guard(require_plotting)
    if batches is not None and batches < 1:
        _fail([f"error: --batches: must be at least 1, got {batches}"], 2)
    loaded = _guard(lambda: load_spec(spec, work_dir=work_dir))
    if stage not in loaded.stage_names:
        known = ", ".join(loaded.stage_names)
        _fail([f"error: --stage: no stage {stage!r} in {spec}; choose from: {known}"], 2)
    folder = _guard(lambda: output_folder(loaded, stage, output))

    def run() -> Any:
        with progress_bar(err) as bar:
            found = analyze_stage(
                loaded, stage, batches=batches, sensitivity=not no_sensitivity, progress=bar
            )
        write_outputs(found, folder)
        return found

    for line in summary_lines(_guard(run, verbose)):
        typer.echo(line)


@app.command(short_help="Draw the loss and validation metrics of every stage to curves.png.")
def plot(
    spec: SpecArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Default: {work_dir}/curves.png.", metavar="FILE"),
    ] = None,
    work_dir: WorkDirOpt = None,
) -> None:
    """Draw the stages' metrics.jsonl on one time axis, a band per stage: training and
    validation loss above, the other validation metrics below, last values written."""
    from hatcli.curves import draw_spec, require_matplotlib
    from hatcli.spec.spec import load_spec

    _guard(require_matplotlib)
    loaded = _guard(lambda: load_spec(spec, work_dir=work_dir))
    typer.echo(str(_guard(lambda: draw_spec(loaded, output))))


@app.command("plugins", short_help="The installed plugins and the components each gives.")
def list_plugins(
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable output.", metavar="")
    ] = False,
) -> None:
    """The installed plugins, their versions and the components each gives."""
    infos = _guard(plugins.plugin_infos)
    if as_json:
        rows = [
            {
                "name": i.name,
                "distribution": i.distribution,
                "version": i.version,
                "components": i.components,
            }
            for i in infos
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("plugin", "version", "components")
    for info in infos:
        parts = [f"{kind}: {', '.join(names)}" for kind, names in sorted(info.components.items())]
        table.add_row(info.name, info.version or "-", "\n".join(parts) or "-")
    Console().print(table)


@app.command(short_help="Print the spec's full JSON Schema, plugin components included.")
def schema() -> None:
    """Print the full JSON Schema of a spec, installed plugin components included."""
    from hatcli.spec.schema import assembled_schema

    typer.echo(json.dumps(_guard(assembled_schema), indent=2))


def _format_warning(message: Any, category: type, *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


class _ConventionalArgument(TyperArgument):
    """A positional argument shown as git and pip show one: ``SPEC`` in the usage line
    and the help (typer writes ``{SPEC}`` and ``SPEC <path>``)."""

    def _usage_display_name(self) -> str:
        return self.display_name_raw if self.required else f"[{self.display_name_raw}]"

    def display_type(self, ctx: Any) -> str:
        return ""


def _conventional_help(command: Any) -> None:
    for param in command.params:
        if type(param) is TyperArgument:
            param.__class__ = _ConventionalArgument
    for sub in getattr(command, "commands", {}).values():
        _conventional_help(sub)


def _plugins_dir_from(argv: list[str]) -> str | None:
    """``--plugins-dir DIR`` (or ``=DIR``) before the command: plugins load before the
    command line is parsed, since they add commands."""
    for i, arg in enumerate(argv):
        if arg == "--plugins-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--plugins-dir="):
            return arg.split("=", 1)[1]
        if not arg.startswith("-"):
            return None  # the command: what follows is its own
    return None


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", help="Print hat's version and exit.", metavar="")
    ] = False,
    plugins_dir: Annotated[
        str | None,
        typer.Option(
            "--plugins-dir",
            help=f"Load every *.py in DIR as a plugin (also ${plugins.PLUGINS_DIR_ENV}).",
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """Quantization-aware training for int8 fixed-point accelerators."""
    if version:
        from importlib.metadata import version as installed

        typer.echo(f"hat {installed('hat')}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def main() -> None:
    warnings.formatwarning = _format_warning
    folder = _plugins_dir_from(sys.argv[1:])
    if folder is not None:
        os.environ[plugins.PLUGINS_DIR_ENV] = folder  # launched workers load it too
    try:
        plugins.load_plugins()
        plugins.register_commands(app)
    except PluginError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(2)
    command = typer.main.get_command(app)
    _conventional_help(command)
    command(prog_name="hat")


if __name__ == "__main__":
    main()
