"""Local worker processes for ``qra search --workers N``: placement, a memory check, start and stop.

Each worker is a ``qra worker`` process (see ``worker``) on one device; several share a GPU
when the model is small. CUDA workers see only their GPU (``CUDA_VISIBLE_DEVICES``) and
get an equal share of the CPU threads. Before anything starts, the predicted memory of the
workers placed on each device is checked against what that device has free, and too many
workers are refused with the numbers. The storage URL reaches the workers through the
environment (``QRADAPTOR_STORAGE``), never their command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qradaptor.redact import STORAGE_ENV

if TYPE_CHECKING:
    import torch

    from qradaptor.distributed.queue import QueueSettings
    from qradaptor.models.structure import ModelStructure
    from qradaptor.search.space import MemoryTable

CUDA_CONTEXT_BYTES = 600 * 2**20
"""A CUDA context and the kernels a worker loads, beyond its tensors (a typical size, not measured here)."""
CUDA_ALLOCATOR_SLACK = 1.3
"""Peak bytes PyTorch's caching allocator reserves per predicted tensor byte: a worker builds and
frees a model per plan, and freed blocks stay reserved. Measured on an H100 (docs/SCALE.md):
6,702-6,790 MiB reserved against 5,289 MiB of predicted tensors, a ratio of 1.27-1.28."""
MIB = 2**20


def place_workers(count: int, device: str, gpus: Sequence[int] | None, visible_gpus: int) -> list[str]:
    """The device of each of ``count`` workers: "cpu", or "cuda:K" round-robin over ``gpus``.

    Raises:
        ValueError: for a count below 1, GPUs given for CPU workers, or a GPU index that
            is not visible (the visible ones are named).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {count!r}")
    if device == "cpu":
        if gpus:
            raise ValueError(f"--gpus {','.join(map(str, gpus))} was given but the device is cpu")
        return ["cpu"] * count
    chosen = list(gpus) if gpus else list(range(visible_gpus))
    bad = [g for g in chosen if not 0 <= g < visible_gpus]
    if bad or not chosen:
        raise ValueError(
            f"--gpus {','.join(map(str, chosen))}: this machine shows {visible_gpus} GPU(s), "
            f"indices 0..{visible_gpus - 1}"
        )
    return [f"cuda:{chosen[i % len(chosen)]}" for i in range(count)]


def worker_bytes(
    structure: ModelStructure,
    table: MemoryTable,
    model_bytes: int,
    batch_size: int,
    seq_len: int,
    group_size: int,
    cuda: bool,
    *,
    double_quant: bool = False,
    quant_method: str = "hqq",
) -> int:
    """Predicted peak bytes of one worker: its copies of the model, its fitted codes, one proxy step.

    A worker holds the base model and a candidate built from it (simulated layers are
    dense, so each costs ``model_bytes``, the model's fp32 tensors), its ``QuantCache``
    (``stage_memory.cache_bytes``: every block linear at every quantised bit-width of the
    space, stored as ``quant_method`` and ``double_quant`` say), and the adapters,
    gradients, AdamW moments and saved activations of the space's largest plan in fp32
    (``memory.training_memory``); on CUDA also the caching allocator's slack and a context.
    """
    from qradaptor.memory import plan_memory, training_memory
    from qradaptor.search.space import smallest_and_largest
    from qradaptor.stage_memory import cache_bytes

    space = table.space
    _, high = smallest_and_largest(table, space)
    largest = space.to_plan(high, model_signature=structure.signature, group_size=group_size)
    report = plan_memory(structure, largest, weight_bytes=4)
    step = training_memory(structure, report, batch_size=batch_size, seq_len=seq_len, act_bytes=4)
    cache = cache_bytes(
        structure, space.bit_choices, group_size, double_quant=double_quant, quant_method=quant_method
    )
    training = step.total - report.total_bytes + report.adapter_bytes  # beyond the frozen weights
    tensors = 2 * model_bytes + training + cache
    return int(tensors * CUDA_ALLOCATOR_SLACK + CUDA_CONTEXT_BYTES) if cuda else int(tensors)


def check_memory(devices: Sequence[str], per_worker: int, free: dict[str, int]) -> None:
    """Refuses a placement whose workers need more memory than a device has free.

    Raises:
        ValueError: naming the device, the worker count, the bytes each needs and the
            bytes free, and the most workers that fit.
    """
    for device in dict.fromkeys(devices):
        count = sum(d == device for d in devices)
        if count * per_worker > free[device]:
            fits = free[device] // per_worker
            raise ValueError(
                f"{count} workers on {device} need about {count * per_worker / MIB:,.0f} MiB "
                f"({per_worker / MIB:,.0f} MiB each, predicted) but {free[device] / MIB:,.0f} MiB are free; "
                f"at most {fits} fit there: lower --workers or spread them with --gpus"
            )


def free_memory(devices: Sequence[str]) -> dict[str, int]:
    """Free bytes of each device: ``torch.cuda.mem_get_info`` for GPUs, available RAM for cpu."""
    free = {}
    for device in dict.fromkeys(devices):
        if device == "cpu":
            free[device] = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        else:
            import torch

            free[device] = int(torch.cuda.mem_get_info(torch.device(device))[0])
    return free


def local_worker_devices(
    workers: int,
    device: str,
    gpus: Sequence[int] | None,
    structure: ModelStructure,
    table: MemoryTable,
    model: torch.nn.Module,
    batch_size: int,
    seq_len: int,
    group_size: int,
    *,
    double_quant: bool = False,
    quant_method: str = "hqq",
) -> tuple[list[str], int]:
    """The device of each of ``workers`` local workers, and the predicted peak bytes of one,
    after checking that they fit in memory.

    Args:
        workers: how many (0: none, and then ``gpus`` must be empty).
        device: "cpu" or "cuda".
        gpus: GPU indices to spread them over (None: every visible GPU).
        structure, table: the searched model and space (``search_space``).
        model: the loaded fp32 model (its bytes are a worker's base copy).
        batch_size, seq_len, group_size: the proxy's batch and window, the plans' group size.
        double_quant, quant_method: how the plans' fits store their scales and zeros.

    Raises:
        ValueError: see ``place_workers`` and ``check_memory``.
    """
    if not workers:
        if gpus:
            raise ValueError("--gpus places local workers: give --workers N too")
        return [], 0
    import torch

    from qradaptor.memory import model_tensor_bytes

    devices = place_workers(workers, device, gpus, torch.cuda.device_count() if device == "cuda" else 0)
    per_worker = worker_bytes(
        structure,
        table,
        model_tensor_bytes(model),  # the search loads fp32 weights, as each worker does
        batch_size,
        seq_len,
        group_size,
        cuda=device == "cuda",
        double_quant=double_quant,
        quant_method=quant_method,
    )
    check_memory(devices, per_worker, free_memory(devices))
    return devices, per_worker


@dataclass
class _Process:
    device: str
    log: Path
    popen: subprocess.Popen


class LocalWorkers:
    """``qra worker`` processes on this machine, one per device entry; a context manager.

    Example:
        >>> with LocalWorkers(url, "qradaptor", ["cuda:0", "cuda:0"], run_dir / "workers") as pool:
        ...     pool.start()
        ...     ...                 # the search waits, calling pool.check_alive()
    """

    def __init__(
        self,
        storage: str,
        study: str,
        devices: Sequence[str],
        log_dir: Path,
        settings: QueueSettings,
        model: str | None = None,
    ) -> None:
        self.storage = storage
        self.study = study
        self.devices = list(devices)
        self.log_dir = log_dir
        self.settings = settings
        self.model = model
        self.processes: list[_Process] = []

    def start(self) -> None:
        """Starts every worker; their output goes to ``log_dir/worker-K.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 1) // len(self.devices))
        for index, device in enumerate(self.devices):
            # The URL goes in the environment, which only this user can read; on the command
            # line every local user would see its password in ps.
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
            env[STORAGE_ENV] = self.storage
            argv = [sys.executable, "-m", "qradaptor", "worker", "--study", self.study]
            if device.startswith("cuda:"):
                env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
                argv += ["--device", "cuda"]
            else:
                argv += ["--device", "cpu"]
            argv += [
                "--heartbeat",
                str(self.settings.heartbeat_seconds),
                "--grace",
                str(self.settings.grace_seconds),
                "--name",
                f"worker-{index}@{device}",
            ]
            if self.model is not None:
                argv += ["--model", self.model]
            log = self.log_dir / f"worker-{index}.log"
            with open(log, "wb") as out:
                popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
            self.processes.append(_Process(device, log, popen))

    def check_alive(self) -> None:
        """Raises when every worker has exited (the search would wait for ever).

        Raises:
            RuntimeError: with the last lines of the last worker's log.
        """
        if self.processes and all(p.popen.poll() is not None for p in self.processes):
            last = self.processes[-1]
            tail = last.log.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(
                f"all {len(self.processes)} workers exited (last exit code {last.popen.returncode}); "
                f"the end of {last.log}:\n  " + "\n  ".join(tail)
            )

    def stop(self, wait: float = 30.0) -> None:
        """Waits up to ``wait`` s for workers to leave by themselves, then SIGTERM, then SIGKILL."""
        deadline = time.monotonic() + wait
        for process in self.processes:
            try:
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()

    def __enter__(self) -> LocalWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        # On an error or Ctrl-C the search is not finished, so workers would idle: end them now.
        self.stop(wait=30.0 if exc[0] is None else 0.0)
