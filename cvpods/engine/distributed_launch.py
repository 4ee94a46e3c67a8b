"""Process start-up of distributed runs: :func:`launch` starts a function in one process per
device (torch.multiprocessing + torch.distributed). It is re-exported as
``cvpods.engine.launch``; the console commands ``cvpods_train`` / ``cvpods_test`` that call it are
in :mod:`cvpods.engine.launcher`.

With CUDA, each process drives one GPU and the processes talk over NCCL; without CUDA the
processes run on the CPU and talk over Gloo (``num_gpus_per_machine`` then means "processes per
machine"). Models are wrapped in ``DistributedDataParallel`` by the trainer, not here.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cvpods.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "find_free_port", "launch"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


def find_free_port() -> int:
    """A TCP port that is free on this machine right now (chosen by the OS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence[Any] = (),
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> Any:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of the machines.

    Args:
        main_func: a module-level (picklable) function; it runs after the process group is set
            up, so it can use :mod:`cvpods.utils.comm`.
        num_gpus_per_machine: GPUs (CUDA) or processes (CPU) per machine.
        num_machines: machines taking part.
        machine_rank: this machine's index (0 .. num_machines - 1).
        dist_url: the rendezvous URL (``tcp://host:port``, ``file:///path``); ``"auto"`` picks
            a free local port (single machine only).
        args: the arguments of ``main_func`` (picklable).
        timeout: how long collectives wait before failing.

    Returns:
        ``main_func``'s return value when a single process is used (no process group), else None.
    """
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(
            f"need at least one process per machine and one machine; got "
            f"num_gpus_per_machine={num_gpus_per_machine}, num_machines={num_machines}"
        )
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"machine_rank must be in [0, {num_machines}), got {machine_rank}")
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)

    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine} but only {torch.cuda.device_count()} CUDA "
            "devices are visible"
        )
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' only works on one machine; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if num_machines > 1 and dist_url.startswith("tcp://127.0.0.1"):
        logger.warning("dist_url %s is local but %d machines take part", dist_url, num_machines)

    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            tuple(args),
            timeout,
        ),
        daemon=False,
        start_method="spawn",
    )
    return None


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: datetime.timedelta,
) -> None:
    """One spawned process: join the process group, run ``main_func``, leave the group."""
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ["RANK"] = str(global_rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_WORLD_SIZE"] = str(num_gpus_per_machine)
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # CPU processes share the cores instead of each using all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_gpus_per_machine))
    backend = "nccl" if use_cuda else "gloo"
    try:
        dist.init_process_group(
            backend=backend,
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception as exc:
        raise RuntimeError(
            f"process {global_rank} of {world_size} could not join the {backend} process group "
            f"at {dist_url}: {exc}"
        ) from exc
    try:
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()
