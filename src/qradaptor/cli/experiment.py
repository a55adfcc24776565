"""``qra experiment``: run experiment files (methods x budgets x seeds) end to end, then tabulate them."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.cli.common import DEVICES, check_device

if TYPE_CHECKING:
    from qradaptor.experiment.commands import Experiment


def _check_commands(experiments: list[Experiment]) -> None:
    """Parses every command with its verb's own parser, so a bad option fails before anything runs."""
    from qradaptor.cli import build_parser

    parser = build_parser()
    seen: set[str] = set()
    for experiment in experiments:
        for cell in experiment.cells:
            steps = [*cell.before, *cell.steps]
            for step in steps:
                if step.command in seen:
                    continue
                seen.add(step.command)
                err = io.StringIO()
                try:
                    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                        parser.parse_args([step.verb, *step.argv])
                except SystemExit:
                    message = (
                        err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "bad options"
                    )
                    raise ValueError(
                        f"{experiment.source}: {cell.label} makes a command its verb refuses: "
                        f"{step.command}: {message}"
                    ) from None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _select(experiments: list[Experiment], only: str | None, option: str = "--only") -> list[Experiment]:
    """Keeps the experiments, their labels, or single cells (LABEL/seedN) named by --only."""
    from dataclasses import replace

    if only is None:
        return experiments
    names = {n.strip() for n in only.split(",") if n.strip()}
    known = {e.name for e in experiments} | {c.label for e in experiments for c in e.cells}
    known |= {c.label.split("@")[0] for e in experiments for c in e.cells}
    cell_names = {f"{c.label}/seed{c.seed}" for e in experiments for c in e.cells}
    for name in sorted(names - known):
        label = name.split("/seed")[0] if "/seed" in name else None
        if label not in known:
            raise ValueError(
                f"{option} {name!r} is no experiment, label or LABEL/seedN here; "
                f"known: {', '.join(sorted(known))}"
            )
        if name not in cell_names:
            seeds = sorted({c.seed for e in experiments for c in e.cells if c.label == label})
            raise ValueError(
                f"{option} {name!r}: {label} has no such seed; its seeds: {', '.join(map(str, seeds))}"
            )

    def chosen(cell: Any) -> bool:
        return bool({cell.label, cell.label.split("@")[0], f"{cell.label}/seed{cell.seed}"} & names)

    kept = []
    for e in experiments:
        if e.name in names:
            kept.append(e)
            continue
        cells = tuple(c for c in e.cells if chosen(c))
        if cells:
            kept.append(replace(e, cells=cells))
    return kept


def _gpu_list(gpus: str | None, device: str) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value each step on a GPU gets: the GPUs ``--gpus`` names, else
    every GPU this process sees where it sees several (none where it sees one: a step sees it).

    Indices are this process's own, as torch numbers them: under CUDA_VISIBLE_DEVICES=2,3 index
    0 is GPU 2, so a step is given "2", not "0" (which a child reads as the machine's GPU 0).
    """
    if gpus is not None:
        if device == "cpu":
            raise ValueError("--gpus goes with a GPU; it was given with --device cpu")
        parts = [p.strip() for p in gpus.split(",")]
        if not all(p.isdigit() for p in parts):
            raise ValueError(f"--gpus must be GPU indices separated by commas (e.g. 0,1), got {gpus!r}")
    if device == "cpu":
        return []
    import torch

    count = torch.cuda.device_count()
    if gpus is None:
        indices = list(range(count)) if count > 1 else []
    else:
        indices = [int(p) for p in parts]
        bad = [i for i in indices if i >= count]
        if bad:
            seen = f"{count} (0..{count - 1})" if count else "none"
            raise ValueError(f"--gpus {gpus}: GPU {bad[0]} does not exist; this process sees {seen}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    names = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    return [names[i] for i in indices]


def experiment(
    config: list[str],
    *,
    output: str,
    jobs: int = 1,
    gpus: str | None = None,
    device: str = "auto",
    only: str | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    no_reuse: bool = False,
    redo: str | None = None,
) -> int:
    """Run experiment files end to end (search, train, eval per cell), then write their results.

    An experiment file (YAML; see configs/ and docs/RESULTS.md) lists methods, budgets and
    seeds. Each (method, budget, seed) is a cell: a folder DIR/NAME/LABEL/seedK holding
    its fine-tune (train/), its evaluation (eval.json), its logs and cell.json with the qra
    commands that reproduce it. Searched methods run `qra search` first, once per budget and
    seed, into DIR/searches/ (shared by every cell that trains that plan).

    Running the same command again resumes: finished steps are skipped, a killed fine-tune
    continues from its checkpoint, a killed search from its study, an eval.json that lacks a
    task the file now asks for is completed (qra eval --resume scores only those), and failed
    cells are tried again. A cell that would fine-tune the plan a done cell of DIR already fine-tuned, with
    the same seed and the same train and eval options, takes that cell's results instead (its
    cell.json names it; results.md marks it). At the end each experiment gets results.md,
    results.json and plots in DIR/NAME, made from the cell folders (--report-only makes them
    without running).

    Args:
        config: experiment files (YAML); several share one DIR and its searches
        output: the experiments' folder
        jobs: steps run at once, as separate processes (several fit on one GPU for small
            models); a step that runs out of GPU memory is run again later with fewer beside it,
            and the count climbs back once steps succeed again
        gpus: comma-separated GPU indices the steps are spread over, as this process numbers
            them (default: every GPU it sees)
        device: auto (cuda if available), cpu or cuda, for every search, train and eval
        only: comma-separated experiment names, labels or single cells to run (e.g. pilot,
            qra@3.5bits or qra@3.5bits/seed1); the results still cover every cell
        dry_run: print the commands that would run, and run nothing (a cell that would take a
            done cell's results is one line naming it)
        report_only: write the results from the cell folders as they are, and run nothing
        no_reuse: fine-tune and evaluate every cell, even one whose plan, seed and options a done
            cell of DIR already ran (by default it takes that cell's results)
        redo: comma-separated experiment names, labels or single cells (as --only) to make
            again although they ran: their folders move to DIR/archive/STAMP/ first (for a label
            whose meaning changed since its cells ran; a done cell is otherwise kept); with
            --report-only they are moved and the run is left for later
    """
    from qradaptor.experiment.config import load
    from qradaptor.experiment.runner import pending_steps, plan_jobs

    check_device(device)
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if dry_run and report_only:
        raise ValueError("give --dry-run or --report-only, not both")
    root = Path(output)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--output {output!r} is a file; it must be a folder (created if missing)")
    experiments = [load(path, root) for path in config]
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise ValueError(
            f"two experiment files have the name {sorted(n for n in names if names.count(n) > 1)[0]!r}"
        )
    # The reports cover each whole experiment: --only picks what runs, and a report of the picked
    # labels alone would overwrite results.md's other rows.
    whole = {e.name: e for e in experiments}
    experiments = _select(experiments, only)
    _check_commands(experiments)
    if redo is not None:
        if dry_run:
            raise ValueError("--redo moves cells; not with --dry-run (which changes nothing)")
        _redo(_select(experiments, redo, "--redo"), root)
    job_list = plan_jobs(experiments)
    if not report_only:
        _check_weights(experiments)
        # A named --gpus is checked before a dry run too; the default list needs torch, which a
        # dry run does not otherwise import (about 3 s).
        gpu_list = _gpu_list(gpus, device) if gpus is not None or not dry_run else []
    if dry_run:
        _dry_run(job_list, reuse=not no_reuse)
        return 0
    failed: dict[str, str] = {}
    if not report_only:
        _note_unsized_searches(pending_steps(job_list))
        failed = _run(job_list, jobs, gpu_list, device, reuse=not no_reuse)
    for e in experiments:
        _report(whole[e.name], root)
    if failed:
        print(
            f"{_count(len(failed), 'job')} failed (run the same command again to retry them):",
            file=sys.stderr,
        )
        for name, why in failed.items():
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    return 0


def _dry_run(job_list: list, reuse: bool) -> None:
    """Prints each command a run would start, in order, and their count.

    A cell that would take a done twin's results (``reuse.twin_before_run``) is one line naming
    the twin instead of its train and eval: a run copies those results and starts neither, so the
    count is of the commands that would run (issue 20's ablations: three no-bayes searches chose
    the joint search's plans, and the dry run counted six fine-tunes and evaluations too many).
    The jobs counted are those with a command to run; finished ones are counted apart.
    """
    from qradaptor.experiment.reuse import twin_before_run
    from qradaptor.experiment.runner import pending_steps

    todo = pending_steps(job_list)
    _note_unsized_searches(todo)
    twins = {}
    if reuse:
        cells = [job for job in job_list if job.cell is not None]
        twins = {job.name: twin for job in cells if (twin := twin_before_run(job.cell)) is not None}
    said: set[str] = set()
    for name, step in todo:
        if name not in twins:
            print(f"{name}: {step.command}")
        elif name not in said:
            said.add(name)
            print(f"{name}: takes {twins[name].name}'s results (the same plan, seed and options)")
    to_run = [name for name, _ in todo if name not in twins]  # a job's name once per command
    busy = len(set(to_run))
    done = len(job_list) - busy - len(twins)
    finished = f" ({done} done)" if done else ""
    verb = "takes" if len(twins) == 1 else "take"
    reused = f"; {_count(len(twins), 'cell')} {verb} a done cell's results" if twins else ""
    print(f"{_count(len(to_run), 'command')} to run, in {_count(busy, 'job')}{finished}{reused}")


def _check_weights(experiments: list[Experiment]) -> None:
    """One error, before any step runs, for cells whose evaluation needs weights that are not here."""
    lacking = [c for e in experiments for c in e.cells if c.lacks_weights()]
    if lacking:
        names = [f"{c.experiment}/{c.label}/seed{c.seed}" for c in lacking[:6]]
        labels = sorted({c.label for c in lacking})
        raise ValueError(
            f"{_count(len(lacking), 'cell')} to evaluate on a fine-tune whose adapter is not here "
            f"(copied with its results only): {', '.join(names)}"
            f"{' ...' if len(lacking) > 6 else ''}; fine-tune them again with --redo {','.join(labels)}"
        )


def _note_unsized_searches(todo: list[tuple[str, Any]]) -> None:
    """Says, on stderr, when searches to run name no --preset: each then sizes itself by the
    device it runs on (``recipes.search.sized``), so a file resumed on another machine can hold
    searches of two sizes under one label (docs/RESULTS.md: main's default searches ran at the
    quick preset on a CPU, its GPU-run neighbours at the full one)."""
    from qradaptor.experiment.commands import flag_value

    searches = [step for _, step in todo if step.verb == "search"]
    unsized = sum(1 for step in searches if flag_value(step.argv, "--preset") in (None, "auto"))
    if unsized:
        print(
            f"qra experiment: {unsized} search{'' if unsized == 1 else 'es'} to run "
            f"name{'s' if unsized == 1 else ''} no fixed preset (or auto), so each takes its "
            "device's (quick on the CPU, full on CUDA); `preset: full` or `preset: quick` in the "
            "file's search options makes them one size wherever they run",
            file=sys.stderr,
        )


def _redo(named: list[Experiment], root: Path) -> None:
    """Moves the named cells' folders to DIR/archive/STAMP/ (``experiment.archive``), said on stderr."""
    from qradaptor.experiment.archive import ARCHIVE, archive_cells, fresh_stamp

    stamp = fresh_stamp(root, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    moved = archive_cells([cell for e in named for cell in e.cells], root, stamp)
    print(f"qra experiment: moved {_count(len(moved), 'cell')} to {root / ARCHIVE / stamp}", file=sys.stderr)


def _run(job_list: list, jobs: int, gpus: list[int], device: str, reuse: bool) -> dict[str, str]:
    from qradaptor.experiment.runner import Runner, pending_steps
    from qradaptor.progress import progress_bar

    todo = len(pending_steps(job_list))
    start = time.monotonic()
    with progress_bar(total=todo, desc="experiment steps", unit="step") as bar:

        def on_step(name: str, step: Any, seconds: float, ok: bool) -> None:
            bar.update(1)
            bar.write(f"{'done' if ok else 'FAILED'} {name}: qra {step.verb} ({seconds:.0f} s)")

        def on_retry(name: str, step: Any, workers: int) -> None:
            bar.write(
                f"out of GPU memory: {name}: qra {step.verb}; again later, {workers} steps at once from now"
            )

        def on_raise(workers: int) -> None:
            bar.write(f"no step out of GPU memory lately: {workers} steps at once from now")

        def on_reuse(name: str, twin: str, skipped: int) -> None:
            bar.update(skipped)
            bar.write(f"reused {name}: same plan, seed and options as {twin}; its results copied")

        runner = Runner(
            job_list,
            workers=jobs,
            gpus=gpus,
            device=device,
            on_step=on_step,
            on_retry=on_retry,
            on_raise=on_raise,
            reuse=reuse,
            on_reuse=on_reuse,
        )
        try:
            summary = runner.run()
        except KeyboardInterrupt:
            print("stopped; run the same command again to resume", file=sys.stderr)
            raise SystemExit(130) from None
    print(
        f"{_count(summary.steps_run, 'command')} run in {time.monotonic() - start:.0f} s; "
        f"{_count(len(summary.done), 'job')} done, {len(summary.failed)} failed"
    )
    return summary.failed


def _report(experiment: Experiment, root: Path) -> None:
    from qradaptor.experiment.report import CellResult, collect, summarise, write_report

    folder = root / experiment.name
    if not folder.is_dir():
        print(f"{experiment.name}: no cell has run yet; no results")
        return
    # Labels of an experiment run only in part (--only, or added to the file since) have no
    # folder yet: they count as planned, not run.
    started = [label for label in experiment.labels if (folder / label).is_dir()]
    found = {(c.label, c.seed): c for c in (collect(folder, started) if started else [])}
    cells = [
        found.get((c.label, c.seed))
        or CellResult(
            experiment.name,
            c.label,
            c.method,
            c.budget,
            c.seed,
            state="pending",
            done=False,
            error=None,
            folder=str(c.folder.relative_to(folder)),
            commands=tuple(c.commands),
        )
        for c in experiment.cells
    ]
    summary = summarise(cells, reference=experiment.reference)
    paths = write_report(folder, summary, cells)
    print(f"{experiment.name}: " + ", ".join(str(p) for p in paths))


VERB = experiment


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, Any]) -> None:
    """Options of ``qra experiment``."""
    parser.add_argument("config", nargs="+", metavar="CONFIG.yaml", help=helps["config"])
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help=helps["output"])
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help=helps["jobs"])
    parser.add_argument("--gpus", metavar="0,1", help=helps["gpus"])
    parser.add_argument("--device", choices=DEVICES, default="auto", help=helps["device"])
    parser.add_argument("--only", metavar="NAMES", help=helps["only"])
    parser.add_argument("--dry-run", action="store_true", help=helps["dry_run"])
    parser.add_argument("--report-only", action="store_true", help=helps["report_only"])
    parser.add_argument("--no-reuse", action="store_true", help=helps["no_reuse"])
    parser.add_argument("--redo", metavar="NAMES", help=helps["redo"])
