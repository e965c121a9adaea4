"""`hat train --nproc N`: N local workers through torch's elastic launcher."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from hatcli.errors import InputError

LAUNCHED_BY_HAT = "HAT_LAUNCHED"
PROCESSES_PER_CORE = 4
# After a signal, how long the workers get to finish their step and save before they
# are killed (a second signal stops them at once).
SHUTDOWN_TIMEOUT_S = 300
HANDLED = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Launch:
    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    rdzv_endpoint: str | None = None


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            raise InputError(
                f"--master-port {port} is in use on {host}; choose another or leave it out"
            ) from None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_launch(launch: Launch) -> None:
    """Refuse launch arguments that cannot work, before anything starts (``InputError``)."""
    if launch.nproc < 1 or launch.nnodes < 1:
        raise InputError("--nproc and --nnodes must be at least 1")
    cores = usable_cores()
    if launch.nproc > PROCESSES_PER_CORE * cores:
        raise InputError(
            f"--nproc {launch.nproc} is more than {PROCESSES_PER_CORE * cores}, "
            f"{PROCESSES_PER_CORE} per core of the {cores} this process may use"
        )
    if not 0 <= launch.node_rank < launch.nnodes:
        raise InputError(f"--node-rank must be in 0..{launch.nnodes - 1}")
    if launch.master_port is not None and not 1 <= launch.master_port <= 65535:
        raise InputError(f"--master-port {launch.master_port} is not a port: use 1..65535")


def config(launch: Launch, log_dir: str) -> LaunchConfig:
    """torch's launch configuration; the workers' logs and error files go to ``log_dir``."""
    check_launch(launch)
    if launch.rdzv_endpoint:
        backend, endpoint, rdzv = "c10d", launch.rdzv_endpoint, {}
    else:
        port = launch.master_port
        if port is None:
            if launch.nnodes > 1:
                raise InputError("several machines need --master-port (or --rdzv-endpoint)")
            port = free_port(launch.master_addr)
        elif launch.node_rank == 0:
            check_port_free(launch.master_addr, port)
        endpoint = f"{launch.master_addr}:{port}"
        backend, rdzv = "static", {"rank": launch.node_rank}
    quiet_ranks = {r: Std.ALL for r in range(1, launch.nproc)}  # rank 0 speaks for all
    timeout = (
        {"shutdown_timeout": SHUTDOWN_TIMEOUT_S}
        if "shutdown_timeout" in LaunchConfig.__dataclass_fields__  # torch >= 2.6
        else {}
    )
    return LaunchConfig(
        min_nodes=launch.nnodes,
        max_nodes=launch.nnodes,
        nproc_per_node=launch.nproc,
        run_id=os.environ.get("HAT_RUN_ID", uuid.uuid4().hex[:8]),
        rdzv_backend=backend,
        rdzv_endpoint=endpoint,
        rdzv_configs=rdzv,
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(
            log_dir=log_dir,
            redirects=quiet_ranks if launch.node_rank == 0 else Std.ALL,
        ),
        **timeout,  # type: ignore[arg-type]
    )


def _in_own_process_group(entrypoint: Any, *args: Any) -> Any:
    """What each worker runs: ``entrypoint(*args)``, in a process group of its own.

    A terminal's Ctrl-C goes to its whole foreground process group. A worker that got
    it from there and then again from the launcher (which forwards every signal it gets,
    as it must for a ``kill`` sent to it alone) would take the second copy for "stop at
    once" and not save. Out of the group, each worker gets each signal once.
    """
    os.setpgid(0, 0)
    return entrypoint(*args)


def _raise_signal(signum: int, frame: FrameType | None) -> None:
    raise SignalException(f"got {signal.Signals(signum).name}", sigval=signal.Signals(signum))


def _stop_leftover_workers(signum: int) -> None:
    """Pass ``signum`` on to workers still running (when the launcher stopped waiting for
    them, on a second signal) and make sure none outlives the launcher."""
    workers = multiprocessing.active_children()
    for worker in workers:
        if worker.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)
    for worker in workers:
        worker.join(10)
        if worker.is_alive():
            worker.kill()
            worker.join(10)


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    for signum, handler in handlers.items():
        if handler is not None:  # None: set outside Python, cannot be put back
            signal.signal(signum, handler)


def _rank0_message(log_dir: str) -> str | None:
    """The one-line message local rank 0 left in its error file, if any."""
    for error_file in Path(log_dir).glob("*/attempt_*/0/error.json"):
        try:
            message = json.loads(error_file.read_text()).get("message")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(message, str):
            return message
    return None


def _interrupted(signum: int, log_dir: str) -> int:
    message = _rank0_message(log_dir)
    if message is None or not message.startswith("interrupted: "):
        name = signal.Signals(signum).name
        message = f"interrupted: stopped by {name}; the last complete checkpoint stays"
    print(message, file=sys.stderr)
    return 128 + signum


def run_workers(launch: Launch, entrypoint: Any, *args: Any) -> int:
    """Run ``entrypoint(*args)`` in every worker; the exit code of the first failure, or 0.

    SIGINT or SIGTERM to this process reaches every worker once; they finish the step,
    save and stop, and this returns 128 + the signal after printing rank 0's
    "interrupted: ..." line, as a single process does.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in HANDLED} if in_main_thread else {}
    log_dir = tempfile.mkdtemp(prefix="hat-workers-")
    try:
        cfg = config(launch, log_dir)  # checks the arguments first
        os.environ[LAUNCHED_BY_HAT] = "1"  # workers leave error reporting to this process
        # Workers share this machine's cores; without a limit each would start one thread
        # per core and they would slow each other down (torchrun sets 1 for the same reason).
        threads = max(1, (os.cpu_count() or 1) // launch.nproc)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        # The launcher logs each failure with a traceback, and a signal as "Received 15
        # death signal"; hat reports them itself. Some of its loggers set their own level.
        for name in ["torch.distributed.elastic", *logging.root.manager.loggerDict]:
            if name.startswith("torch.distributed.elastic"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)  # "Terminating…"
        # torch installs the same handlers once workers start; these cover the time before.
        for signum in previous:
            signal.signal(signum, _raise_signal)
        try:
            elastic_launch(cfg, _in_own_process_group)(entrypoint, *args)
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
            if failure.exitcode > 0 and failure.error_file_data.get("message"):
                print(failure.message, file=sys.stderr)  # the worker's own one-line message
            else:
                print(
                    f"error: worker rank {rank} failed first ({failure.message}); "
                    "the other workers were stopped",
                    file=sys.stderr,
                )
            return code
        except (SignalException, KeyboardInterrupt) as exc:
            signum = exc.sigval if isinstance(exc, SignalException) else signal.SIGINT
            _restore(previous)  # a further signal stops this process at once
            _stop_leftover_workers(signum)
            return _interrupted(signum, log_dir)
        return 0
    finally:
        _restore(previous)
        shutil.rmtree(log_dir, ignore_errors=True)
