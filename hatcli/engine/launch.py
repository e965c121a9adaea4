"""`hat train --nproc N`: N local workers through torch's elastic launcher."""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from hatcli.errors import InputError

LAUNCHED_BY_HAT = "HAT_LAUNCHED"


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


def config(launch: Launch) -> LaunchConfig:
    if launch.nproc < 1 or launch.nnodes < 1:
        raise InputError("--nproc and --nnodes must be at least 1")
    if not 0 <= launch.node_rank < launch.nnodes:
        raise InputError(f"--node-rank must be in 0..{launch.nnodes - 1}")
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
            log_dir=tempfile.mkdtemp(prefix="hat-workers-"),
            redirects=quiet_ranks if launch.node_rank == 0 else Std.ALL,
        ),
    )


def run_workers(launch: Launch, entrypoint: Any, *args: Any) -> int:
    """Run ``entrypoint(*args)`` in every worker; the exit code of the first failure, or 0."""
    cfg = config(launch)
    os.environ[LAUNCHED_BY_HAT] = "1"  # workers leave error reporting to this process
    # Workers share this machine's cores; without a limit each would start one thread
    # per core and they would slow each other down (torchrun sets 1 for the same reason).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // launch.nproc)))
    # The launcher logs each failure with a traceback; hat reports the first one itself.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)  # "Terminating…"
    try:
        elastic_launch(cfg, entrypoint)(*args)
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
    return 0
