"""Runs the cells of experiments as qra processes, several at once, skipping what is done.

Each search and each cell is a job: a list of steps (qra commands) run one after another
in child processes, ``jobs`` of them at a time, spread over the GPUs. A step whose output
file exists is skipped, so running the same experiments again resumes them: a finished
cell costs nothing, a killed fine-tune continues from its last checkpoint (``--resume``)
and a killed search from its study. A cell waits for the search whose plan it trains;
the searches shared by several cells run once.

A cell about to fine-tune whose fingerprint (plan, seed, train and eval options) equals that of
a done cell anywhere in the output folder takes that cell's results instead (``reuse``), unless
reuse is turned off.

Each step's output goes to a log file beside its folder; the cell's ``cell.json`` records
its commands and its state (done, failed and why).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qradaptor.experiment.cell_state import recorded, write_cell_record
from qradaptor.experiment.commands import Cell, Experiment, Step
from qradaptor.experiment.reuse import cell_fingerprint, find_twin, take_twin, undo_copy
from qradaptor.redact import redact
from qradaptor.runfolder.cell import CELL_FILE

__all__ = ["RunSummary", "Runner", "pending_steps", "plan_jobs", "write_cell_record"]

POLL_SECONDS = 0.5
"""How often running steps are checked."""
STOP_SECONDS = 60.0
"""How long stopped children get to put their checkpoints away before they are killed."""
YOUNG_SECONDS = 5.0
"""Children started this recently are terminated, not interrupted, by a stop: an interpreter can
lose a SIGINT that comes while it starts (an import that clears errors swallows the
KeyboardInterrupt), and a step this young has not loaded a model, so it has nothing to put away."""
DEVICE_VERBS = ("profile", "search", "train", "eval")
"""Verbs that take --device."""
OOM_RETRIES = 3
"""Times a step that ran out of GPU memory is tried again, with fewer steps beside it."""
RAISE_AFTER = 2
"""Steps that must succeed, after the last one that ran out of GPU memory, before one more step
runs at once again (up to ``--jobs``): what crowded the GPU (a step with a larger peak, another
program) may have gone, and a runner that only ever lowered its count ran a whole batch one step
at a time once another program's 24 GB had left (docs/GPU.md, 2026-12-05)."""
OOM_MARKERS = ("torch.OutOfMemoryError", "CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED")
"""What a step's log says when it ran out of GPU memory (cuBLAS says it its own way when a full
GPU leaves no room for its handle: a main-table evaluation on the H100, 2026-12-06)."""


@dataclass
class _Job:
    """A search or a cell: steps run in order, one child process at a time."""

    name: str
    steps: list[Step]
    log_dir: Path
    cell: Cell | None = None
    after: str | None = None
    index: int = 0
    oom_retries: int = 0
    state: str = "waiting"
    error: str | None = None
    process: subprocess.Popen | None = None
    gpu: str | None = None
    started: float = 0.0
    log: Any = None
    trained: bool = False
    """Its fine-tune was started in this run (so its results are its own, not a twin's)."""

    def next_step(self) -> Step | None:
        """The first step not done yet (skipping finished ones), or None."""
        while self.index < len(self.steps) and self.steps[self.index].finished():
            self.index += 1
        return self.steps[self.index] if self.index < len(self.steps) else None


@dataclass
class RunSummary:
    """What a run of experiments did."""

    done: list[str] = field(default_factory=list)
    """Jobs finished (now or before)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Failed jobs and why."""
    steps_run: int = 0
    """Commands run in this call (skipped ones not counted)."""


def plan_jobs(experiments: Sequence[Experiment]) -> list[_Job]:
    """The shared profiles, the searches (each once), then the cells, in file order.

    A profile or search is a job only for a cell with a step still to run: a cell whose results
    are all there needs neither again, even when the search its options now name is missing (a
    default that changed since gives the command another folder, and its cells stay done).
    """
    shared: dict[str, _Job] = {}
    cells: list[_Job] = []
    for experiment in experiments:
        for cell in experiment.cells:
            after = None
            finished = all(step.finished() for step in cell.steps)
            for kind, prior in (("profiles", cell.profile), ("searches", cell.search)):
                if prior is None or finished:
                    continue
                name = f"{kind}/{prior.key}"
                if name not in shared:
                    folder = prior.step.done.parent
                    log_dir = folder.parent / "logs" / folder.name
                    shared[name] = _Job(name, [prior.step], log_dir, after=after)
                after = name  # a search waits for the profile, the cell for the last of them
            name = f"{cell.experiment}/{cell.label}/seed{cell.seed}"
            cells.append(_Job(name, list(cell.steps), cell.folder / "logs", cell=cell, after=after))
    return [*shared.values(), *cells]


def _interruptible() -> None:
    """In a child before exec: SIGINT back to its default, so ``_stop`` can interrupt it.

    A runner started in the background of a non-interactive shell (``cmd &``, some CI) inherits
    SIGINT ignored, and so would every child; Python keeps an ignored SIGINT, so the stop's
    SIGINT would be lost and a step would run on (and finish) in its grace time.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def pending_steps(jobs: Sequence[_Job]) -> list[tuple[str, Step]]:
    """Every (job, step) whose output is missing: what a run would execute."""
    return [(job.name, step) for job in jobs for step in job.steps if not step.finished()]


def _train_flags(step: Step) -> list[str]:
    """--resume for a fine-tune killed after a checkpoint, --force for one killed before."""
    run = step.done.parent
    if step.verb != "train" or not run.exists():
        return []
    checkpoints = run / "checkpoints"
    return ["--resume"] if checkpoints.is_dir() and any(checkpoints.iterdir()) else ["--force"]


def _eval_flags(step: Step) -> list[str]:
    """--resume for an evaluation whose results file lacks tasks it now asks for (``Step.finished``)."""
    return ["--resume"] if step.verb == "eval" and step.done.exists() else []


def _out_of_memory(log: Path) -> bool:
    """True when the last lines of a step's log are a GPU out-of-memory error."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 20_000))
            tail = f.read().decode(errors="replace")
    except OSError:
        return False
    return any(marker in tail for marker in OOM_MARKERS)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


class Runner:
    """Starts and watches the jobs' child processes.

    Args:
        jobs: the searches and cells (``plan_jobs``).
        workers: how many steps run at once.
        gpus: the GPUs the steps are spread over, as CUDA_VISIBLE_DEVICES values (each step
            sees one); empty: no CUDA_VISIBLE_DEVICES is set.
        device: auto, cpu or cuda, passed to every search, train and eval.
        command: the program a step runs as, before ``VERB ARGS``.
        on_step: called with (job name, step, seconds, ok) when a step ends.
        on_retry: called with (job name, step, steps at once from now on) when a step that
            ran out of GPU memory is put back.
        on_raise: called with the new number of steps at once when it goes back up.
        reuse: a cell about to fine-tune what a done cell of the same output folder fine-tuned
            (same fingerprint) copies that cell's results instead of running its train and eval.
        on_reuse: called with (job name, twin's name, steps not run) when a cell reuses.

    A step that runs out of GPU memory (its log says so) is not a failure at once: it goes
    back to the queue and the number of steps at once drops to those still running, so it
    runs again beside fewer others (up to ``OOM_RETRIES`` times). After ``RAISE_AFTER`` steps
    in a row succeed, one more runs at once, up to ``workers``. Steps of small models share a
    GPU well, but the peak of a step is only known once it runs.
    """

    def __init__(
        self,
        jobs: Sequence[_Job],
        *,
        workers: int = 1,
        gpus: Sequence[int | str] = (),
        device: str = "auto",
        command: Sequence[str] = (sys.executable, "-m", "qradaptor"),
        on_step: Callable[[str, Step, float, bool], None] | None = None,
        on_retry: Callable[[str, Step, int], None] | None = None,
        on_raise: Callable[[int], None] | None = None,
        reuse: bool = True,
        on_reuse: Callable[[str, str, int], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"jobs must be >= 1, got {workers}")
        self.jobs = list(jobs)
        self.workers = workers
        self.most_workers = workers
        self._since_oom = 0  # steps that succeeded since the last one that ran out of memory
        self.gpus = [str(g) for g in gpus]
        self.device = device
        self.command = list(command)
        self.on_step = on_step
        self.on_retry = on_retry
        self.on_raise = on_raise
        self.reuse = reuse
        self.on_reuse = on_reuse
        self.summary = RunSummary()
        self._by_name = {job.name: job for job in self.jobs}

    def _env(self, gpu: str | None) -> dict[str, str]:
        env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        # Children share the cores; without this each would start one thread per core.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.workers)))
        return env

    def _gpu(self) -> str | None:
        if not self.gpus:
            return None
        load = {g: 0 for g in self.gpus}
        for job in self.jobs:
            if job.state == "running" and job.gpu is not None:
                load[job.gpu] += 1
        return min(self.gpus, key=lambda g: load[g])

    def _start(self, job: _Job, step: Step) -> None:
        argv = [*step.argv, *_train_flags(step), *_eval_flags(step)]
        if self.device != "auto" and step.verb in DEVICE_VERBS:
            argv += ["--device", self.device]
        if step.verb == "train":
            argv.append("--no-progress")
            job.trained = True
        job.log_dir.mkdir(parents=True, exist_ok=True)
        job.log = open(job.log_dir / f"{step.verb}.log", "a")  # noqa: SIM115 (closed in _finish)
        job.log.write(f"\n$ {redact(step.command)}  # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        job.log.flush()
        job.gpu = job.gpu if job.state == "running" else self._gpu()
        job.process = subprocess.Popen(
            [*self.command, step.verb, *argv],
            stdout=job.log,
            stderr=subprocess.STDOUT,
            env=self._env(job.gpu),
            preexec_fn=_interruptible if os.name == "posix" else None,
        )
        job.started = time.monotonic()
        if job.state != "running" and job.cell is not None:
            write_cell_record(job.cell, "running")
        job.state = "running"

    def _finish(self, job: _Job, state: str, error: str | None = None) -> None:
        job.state, job.error = state, error
        if state == "done":
            self.summary.done.append(job.name)
        else:
            self.summary.failed[job.name] = error or "failed"
        if job.cell is None:
            return
        if state != "done":
            write_cell_record(job.cell, state, error)
            return
        found = None if job.trained else recorded(job.cell)
        if found is not None and found.reused_from is not None:  # done before, by a reuse: keep saying so
            reused = {"reused_from": found.reused_from, "reused_run": found.reused_run}
            write_cell_record(job.cell, state, fingerprint=found.fingerprint, **reused)
        else:
            write_cell_record(job.cell, state, fingerprint=cell_fingerprint(job.cell))

    def _advance(self, job: _Job) -> None:
        """Starts the job's next step (or takes a twin's results instead), or marks it done."""
        step = job.next_step()
        if step is not None and job.cell is not None and not job.trained:
            step = self._reuse_or_not(job, step)
        if step is None:
            self._finish(job, "done")
        else:
            self._start(job, step)

    def _reuse_or_not(self, job: _Job, step: Step) -> Step | None:
        """Before a cell's fine-tune (its plan now made): its twin's results, or the step to run.

        A cell whose cell.json names a twin but whose copies are not all there (a copy cut short,
        or a copied file deleted since) copies again, or its copies go and it fine-tunes: its eval
        never runs on a train folder that holds a copy and no adapter.
        """
        assert job.cell is not None
        found = recorded(job.cell)
        copied = found is not None and found.reused_from is not None
        if step.verb != "train" and not (step.verb == "eval" and copied):
            return step
        wanted = cell_fingerprint(job.cell) if self.reuse else None
        twin = find_twin(job.cell, wanted) if wanted else None
        if twin is not None:
            skipped = len(job.steps) - job.index
            take_twin(job.cell, twin, wanted)
            job.index = len(job.steps)  # done; _finish keeps the twin's name in cell.json
            if self.on_reuse is not None:
                self.on_reuse(job.name, twin.name, skipped)
            return None
        if copied:
            undo_copy(job.cell.folder)
            job.index = 0  # its train step counts as undone again
        return job.next_step()

    def _ready(self, job: _Job) -> bool:
        if job.after is None:
            return True
        dependency = self._by_name[job.after]
        if dependency.state == "failed":
            self._finish(job, "failed", f"its search failed: {dependency.error}")
            return False
        return dependency.state == "done"

    def _poll(self, job: _Job) -> None:
        assert job.process is not None
        code = job.process.poll()
        if code is None:
            return
        step = job.steps[job.index]
        seconds = time.monotonic() - job.started
        job.log.close()
        job.process = None
        self.summary.steps_run += 1
        ok = code == 0 and step.finished()
        if self.on_step is not None:
            self.on_step(job.name, step, seconds, ok)
        log = job.log_dir / f"{step.verb}.log"
        if not ok and job.oom_retries < OOM_RETRIES and _out_of_memory(log):
            job.oom_retries += 1
            job.state, job.gpu = "waiting", None
            self.workers = max(1, sum(j.state == "running" for j in self.jobs))
            self._since_oom = 0
            if self.on_retry is not None:
                self.on_retry(job.name, step, self.workers)
            return
        if not ok:
            lacking = step.missing_tasks()
            why = (
                f"exit code {code}"
                if code != 0
                else f"{step.done.name} lacks {', '.join(lacking)}"
                if lacking
                else f"no {step.done.name} written"
            )
            self._finish(job, "failed", f"qra {step.verb} failed ({why}); see {log}: {_tail(log)}")
            return
        self._since_oom += 1
        if self.workers < self.most_workers and self._since_oom >= RAISE_AFTER:
            self.workers, self._since_oom = self.workers + 1, 0
            if self.on_raise is not None:
                self.on_raise(self.workers)
        job.index += 1
        self._advance(job)

    def run(self) -> RunSummary:
        """Runs every job to done or failed; Ctrl-C stops the children and re-raises."""
        for job in self.jobs:  # so the results count the cells not yet run
            if job.cell is not None and not (job.cell.folder / CELL_FILE).exists():
                write_cell_record(job.cell, "pending")
        try:
            while True:
                running = [job for job in self.jobs if job.state == "running"]
                for job in running:
                    self._poll(job)
                for job in self.jobs:
                    if sum(j.state == "running" for j in self.jobs) >= self.workers:
                        break
                    if job.state == "waiting" and self._ready(job):
                        self._advance(job)
                if all(job.state in ("done", "failed") for job in self.jobs):
                    return self.summary
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self._stop()
            raise

    def _stop(self) -> None:
        """Interrupts running children (a fine-tune saves nothing new; the next run resumes)."""
        import signal

        live = [job for job in self.jobs if job.process is not None]
        now = time.monotonic()
        for job in live:
            young = now - job.started < YOUNG_SECONDS
            job.process.send_signal(signal.SIGTERM if young else signal.SIGINT)
        deadline = time.monotonic() + STOP_SECONDS
        for job in live:
            try:
                job.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
            job.log.close()
            if job.cell is not None:
                write_cell_record(job.cell, "stopped", "interrupted; run the same command again to resume")
