"""Proxy evaluations per minute of `qra search` with N local workers, and a fault run.

Runs the real command (`python -m qradaptor search ... --workers N`) once per worker count,
on the embedded SmolLM2-135M with the default search settings (so each generation's
children and each Bayes round's picks follow N), and reads the study afterwards. The
rate counts every plan the workers scored, over the span from the first trial's start to
the last one's completion: the stretch where workers run, without the model load and the
sensitivity profile of the search process (listed separately).

    python benchmarks/search_workers.py --workers 1,2,4,8 --out /tmp/bench       # one GPU
    python benchmarks/search_workers.py --workers 1,2 --gpus 0,1 --out /tmp/b2   # two GPUs
    python benchmarks/search_workers.py --fault 4 --kills 3 --out /tmp/fault      # kill workers

With ``--fault N`` the search runs with N workers; a random worker that holds a running
trial is SIGKILLed ``--kills`` times (a fresh `qra worker` takes its place each time), and
the study is then checked: every plan has exactly one completed trial, each killed trial
was failed and retried.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

SEARCH_ARGS = ["--budget", "4.0bits"]


def _search_argv(run_dir: Path, workers: int, gpus: str | None, extra: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "qradaptor", "search", *SEARCH_ARGS, "-o", str(run_dir)]
    argv += ["--workers", str(workers), *extra]
    if gpus:
        argv += ["--gpus", gpus]
    return argv


def _study(run_dir: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="qradaptor", storage=f"sqlite:///{run_dir / 'study.db'}")


def _rate(run_dir: Path) -> dict:
    from optuna.trial import TrialState

    trials = _study(run_dir).get_trials(states=(TrialState.COMPLETE,))
    starts = [t.datetime_start for t in trials]
    ends = [t.datetime_complete for t in trials]
    span = (max(ends) - min(starts)).total_seconds()
    per_worker: dict[str, int] = {}
    for t in trials:
        per_worker[t.user_attrs.get("worker", "?")] = per_worker.get(t.user_attrs.get("worker", "?"), 0) + 1
    summary = json.loads((run_dir / "summary.json").read_text())
    settings = json.loads((run_dir / "config.json").read_text())
    peaks = []
    for log in sorted((run_dir / "workers").glob("worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if "peak" in line and "MiB reserved" in line:
                peaks.append(float(line.split("peak ")[1].split(" MiB")[0].replace(",", "")))
    return {
        "plans": len(trials),
        "span_s": span,
        "plans_per_min": 60 * len(trials) / span,
        "mean_trial_s": sum(float(t.user_attrs.get("seconds", 0)) for t in trials) / len(trials),
        "per_worker": per_worker,
        "wall_s": summary.get("wall_seconds"),
        "stage_s": summary.get("stage_seconds"),
        "chosen_loss": (summary.get("chosen") or {}).get("loss"),
        "peak_reserved_mib": max(peaks) if peaks else None,
        "predicted_mib": settings["worker_bytes_predicted"] / 2**20,  # launch.worker_bytes, per worker
    }


def throughput(args: argparse.Namespace) -> list[dict]:
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        run_dir = Path(args.out) / f"workers-{workers}"
        started = time.perf_counter()
        argv = _search_argv(run_dir, workers, args.gpus, args.extra)
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"search with {workers} workers failed ({done.returncode})")
        row = {"workers": workers, "command_s": time.perf_counter() - started, **_rate(run_dir)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| workers | plans | scoring span s | plans/min | x first row | mean trial s | peak MiB/worker |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['plans']} | {r['span_s']:.0f} | {r['plans_per_min']:.1f} | "
            f"{r['plans_per_min'] / rows[0]['plans_per_min']:.2f} | {r['mean_trial_s']:.1f} | "
            f"{r['peak_reserved_mib'] or float('nan'):.0f} |"
        )
    print(f"predicted per worker (launch.worker_bytes): {rows[-1]['predicted_mib']:.0f} MiB")
    return rows


def _pid_of(worker: str) -> int | None:
    """The pid of a worker named in a trial: pool workers by their --name, others are host:pid."""
    if "@" in worker:
        found = subprocess.run(["pgrep", "-f", "--", f"--name {worker}"], capture_output=True, text=True)
        out = found.stdout.split()
        return int(out[0]) if out else None
    tail = worker.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def fault(args: argparse.Namespace) -> dict:
    from optuna.trial import TrialState

    run_dir = Path(args.out) / f"fault-{args.fault}"
    argv = _search_argv(run_dir, args.fault, args.gpus, args.extra)
    search = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rng = random.Random(args.seed)
    kills: list[dict] = []
    extra_workers: list[subprocess.Popen] = []
    storage = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    while len(kills) < args.kills and search.poll() is None:
        time.sleep(rng.uniform(5, 15))
        if not (run_dir / "study.db").exists():
            continue
        try:
            running = _study(run_dir).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except Exception:  # noqa: BLE001 - study not created yet
            continue
        held = [t for t in running if t.user_attrs.get("worker")]
        if not held:
            continue
        trial = rng.choice(held)  # a worker mid-trial, chosen at random
        victim = _pid_of(trial.user_attrs["worker"])
        if victim is None:
            continue
        os.kill(victim, signal.SIGKILL)
        kills.append({"pid": victim, "worker": trial.user_attrs["worker"], "trial": trial.number})
        print(f"killed {kills[-1]['worker']} (pid {victim}) while it held trial {trial.number}", flush=True)
        log = open(run_dir / "workers" / f"replacement-{len(kills)}.log", "wb")  # noqa: SIM115
        extra_workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "qradaptor", "worker", "--storage", storage, "--device", "cuda"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    out, err = search.communicate()
    for worker in extra_workers:
        worker.wait(timeout=120)
    if search.returncode != 0:
        print(out.decode()[-3000:], err.decode()[-3000:], file=sys.stderr)
        raise SystemExit(f"fault run failed ({search.returncode})")
    study = _study(run_dir)
    groups: dict[str, list] = {}
    for t in study.trials:
        groups.setdefault(t.user_attrs.get("plan_hash"), []).append(t)
    complete_counts = [sum(t.state == TrialState.COMPLETE for t in ts) for ts in groups.values()]
    result = {
        "workers": args.fault,
        "kills": kills,
        "plans": len(groups),
        "trials": len(study.trials),
        "failed": sum(t.state == TrialState.FAIL for t in study.trials),
        "retried_and_completed": sum(
            t.state == TrialState.COMPLETE and "failed_trial" in t.system_attrs for t in study.trials
        ),
        "plans_with_one_complete": sum(c == 1 for c in complete_counts),
        "plans_without_complete": sum(c == 0 for c in complete_counts),
        "plans_with_two_or_more": sum(c > 1 for c in complete_counts),
        "left_waiting_or_running": sum(
            t.state in (TrialState.WAITING, TrialState.RUNNING) for t in study.trials
        ),
        "pruned_duplicates": sum(t.state == TrialState.PRUNED for t in study.trials),
        **_rate(run_dir),
    }
    print(json.dumps(result, indent=2, default=str))
    return result


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts to measure, in order")
    parser.add_argument("--gpus", help="GPU indices the workers are spread over (qra search --gpus)")
    parser.add_argument("--out", required=True, help="folder for the run folders")
    parser.add_argument("--fault", type=int, help="instead: a fault run with this many workers")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("extra", nargs="*", help="more qra search options, after --")
    args = parser.parse_args()
    result = fault(args) if args.fault else throughput(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
