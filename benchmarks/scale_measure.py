"""Runs one ``qra`` verb as a child process and measures it: wall time, GPU peak (nvidia-smi
polled every 0.5 s over the child's process tree, and the child's own
``torch.cuda.max_memory_allocated`` at exit), host RSS peak (``wait4``'s ``ru_maxrss``, and the
polled tree's RSS), exit code and last error line; a train run's tokens/s from its train.json.
Used by benchmarks/scale_models.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as the child instead of ``-m qradaptor``: records the CUDA allocator's peak at exit.
_WRAPPER = (
    "import atexit, json, os, runpy, sys\n"
    "def _peak():\n"
    "    torch = sys.modules.get('torch')\n"
    "    if torch is not None and torch.cuda.is_initialized():\n"
    "        with open(os.environ['QRA_BENCH_PEAK'], 'w') as f:\n"
    "            json.dump({'max_allocated': torch.cuda.max_memory_allocated(),\n"
    "                       'max_reserved': torch.cuda.max_memory_reserved()}, f)\n"
    "atexit.register(_peak)\n"
    "sys.argv[0] = 'qra'\n"
    "runpy.run_module('qradaptor', run_name='__main__')\n"
)


def log(message: str) -> None:
    print(f"[scale_models {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Stage:
    """One child run of the CLI."""

    model: str
    """The shape's name or "smollm2"."""
    name: str
    """e.g. "profile", "train packed4", "cap refusal"."""
    argv: list[str]
    """Arguments after ``qra``."""
    run_dir: Path | None = None
    """The train run folder, whose train.json has tokens/s."""
    result: dict[str, Any] = field(default_factory=dict)

    def command(self) -> str:
        return " ".join(["python", "-m", "qradaptor", *self.argv])


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return []


def _nvidia_smi(query: str) -> list[str] | None:
    try:
        text = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line for line in text.strip().splitlines() if line.strip()]


def _gpu_used(pids: set[int]) -> tuple[int | None, int | None]:
    """MiB of the GPU that the processes ``pids`` hold, and that the device has in use (a
    container may hide its pids from nvidia-smi: then the second, less the baseline, stands in).
    None without nvidia-smi."""
    apps, device = _nvidia_smi("--query-compute-apps=pid,used_memory"), _nvidia_smi("--query-gpu=memory.used")
    used = None
    if apps is not None:
        used = 0
        for line in apps:
            pid, _, mib = line.partition(",")
            if pid.strip().isdigit() and int(pid) in pids and mib.strip().isdigit():
                used += int(mib)
    total = sum(int(x) for x in device if x.strip().isdigit()) if device else None
    return used, total


def run_stage(stage: Stage, timeout: float, log_dir: Path, poll: bool) -> dict[str, Any]:
    """Runs ``stage`` as a child process and measures it; never raises for a failing child."""
    log_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "_" for c in f"{stage.model}_{stage.name}")
    peak_file, log_file = log_dir / f"{slug}.peak.json", log_dir / f"{slug}.log"
    peak_file.unlink(missing_ok=True)
    env = {**os.environ, "QRA_BENCH_PEAK": str(peak_file), "PYTHONUNBUFFERED": "1"}
    log(f"{stage.model} {stage.name}: {stage.command()}")
    started = time.perf_counter()
    with open(log_file, "w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, *stage.argv], stdout=out, stderr=out, env=env
        )
        gpu_mib, device_mib, tree_rss, status, usage, timed_out = None, None, 0, None, None, False
        baseline = _gpu_used(set())[1] if poll else None
        while status is None:
            pid, status_code, rusage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                status, usage = status_code, rusage
                break
            if poll:
                procs = _tree(child.pid)
                tree_rss = max(tree_rss, sum(_rss(p) for p in procs))
                used, device = _gpu_used({p.pid for p in procs})
                if used is not None:
                    gpu_mib = max(gpu_mib or 0, used)
                if device is not None and baseline is not None:
                    device_mib = max(device_mib or 0, device - baseline)
            if time.perf_counter() - started > timeout and not timed_out:
                timed_out = True
                child.kill()
            time.sleep(0.5)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "Error" in line]
    torch_peak = json.loads(peak_file.read_text()) if peak_file.is_file() else {}
    result = {
        "model": stage.model,
        "stage": stage.name,
        "command": stage.command(),
        "exit_code": child.returncode,
        "timed_out": timed_out,
        "wall_s": round(wall, 1),
        "gpu_peak_mib_nvidia_smi": gpu_mib,
        "gpu_device_used_peak_mib": device_mib,  # the whole GPU's memory.used less before the child
        "gpu_max_allocated_mib": _mib(torch_peak.get("max_allocated")),
        "gpu_max_reserved_mib": _mib(torch_peak.get("max_reserved")),
        # KiB on Linux. Linux carries the high-water RSS across exec, so this is never below the
        # parent's own peak (this benchmark's, with torch loaded: about 3 GB): the polled tree's
        # peak below is the child's own.
        "host_maxrss_mib": round(usage.ru_maxrss / 1024) if usage else None,
        "host_tree_rss_peak_mib": round(tree_rss / 2**20) if tree_rss else None,
        "last_error": (errors or lines or [""])[-1][-500:] if child.returncode != 0 else None,
        "log": str(log_file),
    }
    if stage.run_dir is not None:
        result.update(train_record(stage.run_dir / "train.json"))
    outcome = "ok" if child.returncode == 0 else f"exit {child.returncode}: {result['last_error']}"
    log(f"{stage.model} {stage.name}: {wall:.0f} s, {outcome}")
    return result


def _rss(proc: Any) -> int:
    try:
        return proc.memory_info().rss
    except Exception:  # noqa: BLE001 - the process may be gone
        return 0


def _mib(nbytes: int | None) -> int | None:
    return None if nbytes is None else round(nbytes / 2**20)


def train_record(path: Path) -> dict[str, Any]:
    """tokens/s and the training peak (predicted, measured) from a run's train.json."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    memory = data.get("memory", {})
    return {
        "steps": data.get("steps"),
        "tokens": data.get("tokens"),
        "tokens_per_s": data.get("tokens_per_second"),
        "steady_tokens_per_s": data.get("steady_tokens_per_second"),
        "train_predicted_peak_mib": _mib(memory.get("predicted_peak")),
        "train_measured_peak_mib": _mib(memory.get("measured_peak")),
    }


def cuda_cap_probe(limit: str, timeout: float) -> dict[str, Any]:
    """In a child: cap CUDA at ``limit`` as qra does, then allocate 1 GiB past it."""
    code = (
        "import sys, torch\n"
        "from qradaptor.stage_memory import cap_device_, parse_size\n"
        f"limit = parse_size({limit!r})\n"
        "cap_device_(limit, 'cuda')\n"
        "try:\n"
        "    x = torch.empty(limit + 2**30, dtype=torch.uint8, device='cuda')\n"
        "    print('allocated past the cap'); sys.exit(1)\n"
        "except torch.OutOfMemoryError as err:\n"
        "    print('CUDA out of memory:', str(err).splitlines()[0]); sys.exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    return {
        "model": "-",
        "stage": f"cuda cap probe {limit} (+1 GiB)",
        "exit_code": done.returncode,
        "enforced": done.returncode == 0,
        "message": (done.stdout + done.stderr).strip()[-500:],
    }
