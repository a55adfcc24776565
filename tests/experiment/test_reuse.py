"""Reuse of a done cell's results: the fingerprint (what counts, what does not), the runner taking a
twin's results instead of running train and eval (fake ``qra`` children, as in test_runner.py),
never from a failed or stopped cell, ``reuse=False``, and the report marking the rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from qradaptor.experiment import runner
from qradaptor.experiment.config import load
from qradaptor.experiment.report import collect, summarise, to_markdown
from qradaptor.experiment.reuse import cell_fingerprint, fingerprint, recorded_fingerprint
from qradaptor.experiment.runner import Runner, plan_jobs, write_cell_record
from qradaptor.plan import Plan
from qradaptor.runfolder.cell import CellRecord

ROOT = Path(__file__).resolve().parents[2]
PLAN = Plan.from_lists([4, 4, 2], [8, 8, 16], name="")
"""What both the knapsack's qra plan and the search choose, unless FAKE_SEARCH_PLAN says otherwise."""
TRAIN = {
    "memory": {"avg_bits": 4.5, "avg_rank": 8.0, "predicted_peak": 2**30, "measured_peak": None},
    "tokens": 5000,
    "steady_tokens_per_second": 800.0,
    "train_seconds": 5.0,
    "final_eval_loss": 2.0,
}
FAKE = """\
import json, os, sys
from pathlib import Path

verb, args = sys.argv[1], sys.argv[2:]
out = Path(args[args.index("-o") + 1])
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"verb": verb, "out": str(out)}) + "\\n")
if os.environ.get("FAKE_FAIL") == str(out):
    sys.exit("fake failure")
plan = json.loads(os.environ.get("FAKE_SEARCH_PLAN") if verb == "search" else os.environ["FAKE_PLAN"])
plan["name"] = verb + "-made"  # the two plans differ in name and path only
run = args[args.index("--run") + 1] if "--run" in args else None
ppl = {"run": run, "results": [{"task": "ppl_wiki", "metric": "ppl", "value": 20.0 + len(run or "")}]}
files = {
    "plan": [(out, plan)],
    "search": [(out / "plan.json", plan), (out / "summary.json", {})],
    "train": [(out / "train.json", TRAIN), (out / "adapter" / "adapter_model.safetensors", {})],
    "eval": [(out, ppl)],
}
for path, data in files[verb]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
"""
ALLOCATION = """\
name: alloc
model: /m
seeds: [0, 1]
train: {lr: 0.0002, limit: 30}
eval: {tasks: ppl_wiki, limit: 5}
methods:
  - {label: knapsack, plan: knapsack, budgets: [4.0bits]}
  - {label: qra, search: {}, budgets: [4.0bits]}
"""
"""Each search chooses the knapsack's plan (the fake writes one plan for both): qra's cells are
the knapsack's cells again, seed by seed."""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    script = tmp_path / "fake_qra.py"
    script.write_text(f"TRAIN = {TRAIN!r}\n" + FAKE)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "ran.jsonl"))
    monkeypatch.setenv("FAKE_PLAN", json.dumps(PLAN.to_dict()))
    monkeypatch.setenv("FAKE_SEARCH_PLAN", json.dumps(PLAN.to_dict()))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    monkeypatch.setattr(runner, "POLL_SECONDS", 0.01)
    return [sys.executable, "-S", str(script)]


def ran(tmp_path: Path) -> list[tuple[str, str]]:
    path = tmp_path / "ran.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(r["verb"], r["out"]) for r in map(json.loads, lines)]


def experiment(tmp_path: Path, text: str = ALLOCATION, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load(path, tmp_path / "out")


def record(cell) -> CellRecord:
    return CellRecord.load(cell.folder)


def made(cell, plan: Plan, name: str) -> None:
    """Writes the plan the cell's train step reads (its plan step's or its search's), named ``name``."""
    (train,) = [s for s in cell.steps if s.verb == "train"]
    path = Path(train.argv[train.argv.index("--plan") + 1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(Plan.from_dict({**plan.to_dict(), "name": name}).to_json())


def test_the_fingerprint_ignores_folders_and_the_plans_name_and_nothing_else(tmp_path: Path) -> None:
    alloc = experiment(tmp_path)
    knapsack0, knapsack1, qra0, qra1 = alloc.cells
    made(knapsack1, PLAN, "knapsack-4bits-r16")  # DIR/alloc/knapsack@4.0bits/seed1/plan.json
    made(qra1, PLAN, "")  # DIR/searches/<key>/plan.json
    made(knapsack0, PLAN, "knapsack-4bits-r16")
    made(qra0, Plan.from_lists([4, 4, 3], [8, 8, 16]), "")  # seed 0's search chose other bits
    assert str(knapsack1.folder) in " ".join(knapsack1.steps[1].argv)  # the paths do differ
    same = cell_fingerprint(knapsack1)
    assert same is not None and len(same) == 16
    assert cell_fingerprint(qra1) == same
    assert cell_fingerprint(knapsack0) != same  # another seed
    assert cell_fingerprint(qra0) not in (same, cell_fingerprint(knapsack0))  # another plan
    # Another lr, limit, eval task or method: another fingerprint, the plan and seed alike.
    for old, new in [
        ("lr: 0.0002", "lr: 0.0003"),
        ("limit: 30", "limit: 31"),
        ("tasks: ppl_wiki", "tasks: suite"),
        ("{label: qra, search: {}", "{label: qra, method: dora, search: {}"),
        ("model: /m", "model: /other"),
    ]:
        other = experiment(tmp_path, ALLOCATION.replace(old, new), "other.yaml").cells[3]
        made(other, PLAN, "")
        assert cell_fingerprint(other) != same, new


def test_the_fingerprint_is_of_the_plans_content_seed_and_options() -> None:
    plan = {k: v for k, v in PLAN.to_dict().items() if k != "name"}
    train = ["/m", "--method", "lora", "--plan", "a/plan.json", "--seed", "1", "--lr", "2e-4"]
    train += ["-o", "a/train"]
    evaluate = ["--run", "a/train", "--tasks", "suite", "-o", "a/eval.json"]
    base = fingerprint(plan, 1, train, evaluate)
    moved = [v.replace("a/", "b/") for v in train]
    assert fingerprint(plan, 1, moved, [v.replace("a/", "b/") for v in evaluate]) == base
    assert fingerprint({**plan, "group_size": 32}, 1, train, evaluate) != base
    assert fingerprint(plan, 2, train, evaluate) != base
    assert fingerprint(plan, 1, [*train[:-2], "--epochs", "2", *train[-2:]], evaluate) != base
    assert fingerprint(plan, 1, train, [*evaluate[:-2], "--limit", "9", *evaluate[-2:]]) != base
    assert fingerprint("uniform:4:8", 1, train, evaluate) != fingerprint("uniform:4:16", 1, train, evaluate)


def test_amq_lora_on_a_plan_of_one_rank_is_lora_and_on_any_other_keeps_its_name() -> None:
    """amq-lora trains a bits-only plan as lora does (train/methods.py), so main's amq-lora cells,
    whose searches chose the knapsack plan, take the knapsack cells' results; on a mixed-rank plan,
    which amq-lora refuses, it must not take a lora twin's."""
    evaluate = ["--run", "a/train", "--tasks", "suite", "-o", "a/eval.json"]

    def of(method: str, plan: Plan) -> str:
        content = {k: v for k, v in plan.to_dict().items() if k != "name"}
        train = ["/m", "--method", method, "--plan", "a/plan.json", "--seed", "0", "-o", "a/train"]
        return fingerprint(content, 0, train, evaluate)

    one_rank = Plan.from_lists([4, 3, 8], [16, 16, 16])
    assert of("amq-lora", one_rank) == of("lora", one_rank)
    assert of("dora", one_rank) != of("lora", one_rank)
    assert of("amq-lora", PLAN) != of("lora", PLAN)  # ranks 8, 8, 16


def test_an_old_cell_json_without_one_gets_the_same_fingerprint_from_its_files(fake, tmp_path) -> None:
    alloc = experiment(tmp_path)
    Runner(plan_jobs([alloc]), command=fake, reuse=False).run()
    for cell in alloc.cells:
        kept = record(cell)
        assert kept.fingerprint == cell_fingerprint(cell) and kept.reused_from is None
        old = CellRecord.from_dict({k: v for k, v in kept.to_dict().items() if k != "fingerprint"})
        assert old.fingerprint is None
        assert recorded_fingerprint(cell.folder, old) == kept.fingerprint


def test_the_committed_runs_where_the_search_chose_the_knapsack_plan_match() -> None:
    """docs/ALLOCATION.md: at 4.0 bits the searches of seeds 1 and 2 chose the knapsack-dq plan
    (seed 0's did not); these cells were fine-tuned twice before reuse existed. (Archived since
    with the metadata quantiser they measured, paths kept: docs/results/archive/dq-clamped-step.)"""
    allocation = ROOT / "docs" / "results" / "archive" / "dq-clamped-step" / "allocation"

    def of(label: str, seed: int) -> str | None:
        folder = allocation / label / f"seed{seed}"
        return recorded_fingerprint(folder, CellRecord.load(folder))

    for seed in (1, 2):
        assert of("qra-dq@4.0bits", seed) == of("knapsack-dq@4.0bits", seed) is not None
    assert of("qra-dq@4.0bits", 0) != of("knapsack-dq@4.0bits", 0)
    assert of("qra-dq@4.0bits", 1) != of("knapsack-dq@4.0bits", 2)


def test_a_cell_with_a_done_twin_copies_its_results_and_runs_no_train_or_eval(fake, tmp_path) -> None:
    alloc = experiment(tmp_path)
    reused: list[tuple[str, str, int]] = []
    summary = Runner(plan_jobs([alloc]), command=fake, on_reuse=lambda *a: reused.append(a)).run()
    assert summary.failed == {} and len(summary.done) == 2 + 4
    assert summary.steps_run == 2 + 2 * 3  # the searches, the knapsack cells' plan, train and eval
    out = tmp_path / "out" / "alloc"
    assert [verb for verb, where in ran(tmp_path) if "/qra@" in where] == []
    assert reused == [
        ("alloc/qra@4.0bits/seed0", "alloc/knapsack@4.0bits/seed0", 2),
        ("alloc/qra@4.0bits/seed1", "alloc/knapsack@4.0bits/seed1", 2),
    ]
    for seed in (0, 1):
        twin, cell = out / "knapsack@4.0bits" / f"seed{seed}", alloc.cells[2 + seed]
        kept = record(cell)
        assert kept.state == "done" and kept.error is None
        assert kept.reused_from == f"alloc/knapsack@4.0bits/seed{seed}"
        assert kept.reused_run == f"../../knapsack@4.0bits/seed{seed}/train"
        assert (cell.folder / kept.reused_run / "adapter").is_dir()  # where the weights are
        assert kept.fingerprint == record(alloc.cells[seed]).fingerprint == cell_fingerprint(cell)
        for name in ("eval.json", "train/train.json"):
            assert (cell.folder / name).read_bytes() == (twin / name).read_bytes(), name
        assert sorted(p.name for p in (cell.folder / "train").iterdir()) == ["train.json"]  # no adapter copy
    assert record(alloc.cells[0]).fingerprint != record(alloc.cells[1]).fingerprint
    # Run again: nothing runs, and the cells still say whose results they hold.
    # (four jobs: the cells; no search is needed again)
    again = Runner(plan_jobs([alloc]), command=fake).run()
    assert again.steps_run == 0 and again.failed == {} and len(again.done) == 4
    assert record(alloc.cells[3]).reused_from == "alloc/knapsack@4.0bits/seed1"


def test_a_twin_in_another_experiment_of_the_output_is_found(fake, tmp_path) -> None:
    first = experiment(tmp_path, ALLOCATION.replace("  - {label: qra", "  # - {label: qra"))
    Runner(plan_jobs([first]), command=fake).run()
    second = experiment(tmp_path, ALLOCATION.replace("name: alloc", "name: second"), "second.yaml")
    summary = Runner(plan_jobs([second]), command=fake).run()
    assert summary.failed == {}
    # A cell that reused is no twin itself: each names the cell that fine-tuned.
    twins = [f"alloc/knapsack@4.0bits/seed{s}" for s in (0, 1)]
    assert [record(c).reused_from for c in second.cells] == twins * 2
    # The plan steps ran (the plan decides the fingerprint); no train or eval of the second.
    assert {v for v, where in ran(tmp_path) if "/second/" in where} == {"plan"}


def test_without_reuse_every_cell_trains_and_evaluates(fake, tmp_path) -> None:
    alloc = experiment(tmp_path)
    summary = Runner(plan_jobs([alloc]), command=fake, reuse=False).run()
    assert summary.failed == {} and summary.steps_run == 2 + 2 * 3 + 2 * 2
    qra = [c.folder for c in alloc.cells[2:]]
    assert [v for v, where in ran(tmp_path) if "/qra@" in where] == ["train", "eval"] * 2
    assert all(CellRecord.load(f).reused_from is None for f in qra)


def test_another_plan_is_not_reused(fake, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SEARCH_PLAN", json.dumps(Plan.from_lists([4, 4, 3], [8, 8, 16]).to_dict()))
    alloc = experiment(tmp_path)
    Runner(plan_jobs([alloc]), command=fake).run()
    assert [v for v, where in ran(tmp_path) if "/qra@" in where] == ["train", "eval"] * 2
    assert [record(c).reused_from for c in alloc.cells] == [None] * 4


@pytest.mark.parametrize("how", ["failed", "stopped", "running", "no eval.json"])
def test_a_cell_that_did_not_finish_is_never_a_twin(fake, tmp_path, monkeypatch, how: str) -> None:
    alloc = experiment(tmp_path)
    knapsack0 = alloc.cells[0]
    only_knapsack = [job for job in plan_jobs([alloc]) if "/qra@" not in job.name]
    if how == "failed":  # trained (train.json there), then its eval failed
        monkeypatch.setenv("FAKE_FAIL", str(knapsack0.folder / "eval.json"))
    Runner(only_knapsack, command=fake).run()
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    assert (knapsack0.folder / "train" / "train.json").is_file()
    if how in ("stopped", "running"):  # its files all there, its record not done
        write_cell_record(knapsack0, how, "interrupted" if how == "stopped" else None)
    if how == "no eval.json":  # done, but eval.json never came back
        (knapsack0.folder / "eval.json").unlink()
    assert record(knapsack0).state == {"no eval.json": "done"}.get(how, how)
    jobs = [job for job in plan_jobs([alloc]) if "/knapsack@" not in job.name]  # searches done
    Runner(jobs, command=fake).run()
    qra0, qra1 = alloc.cells[2:]
    assert record(qra0).reused_from is None and record(qra0).state == "done"
    assert ("train", str(qra0.folder / "train")) in ran(tmp_path)
    assert record(qra1).reused_from == "alloc/knapsack@4.0bits/seed1"  # its twin did finish


def test_a_copy_cut_short_is_undone_when_the_cell_trains_after_all(fake, tmp_path) -> None:
    alloc = experiment(tmp_path)
    Runner(plan_jobs([alloc]), command=fake).run()
    qra1 = alloc.cells[3]
    (qra1.folder / "train" / "train.json").unlink()  # as if stopped between the two copies
    Runner(plan_jobs([alloc]), command=fake, reuse=False).run()
    assert ran(tmp_path)[-2:] == [
        ("train", str(qra1.folder / "train")),
        ("eval", str(qra1.folder / "eval.json")),
    ]
    assert record(qra1).reused_from is None and record(qra1).state == "done"
    assert json.loads((qra1.folder / "eval.json").read_text())["run"] == str(qra1.folder / "train")


def test_the_report_marks_reused_rows(fake, tmp_path) -> None:
    # A hand-made plan that is the knapsack's (the fake's qra plan makes one plan for both).
    searched = "{label: qra, search: {}, budgets: [4.0bits]}"
    hand = ALLOCATION.replace(searched, "{label: C, plan: {bits: 4, ranks: 8}}")
    alloc = experiment(tmp_path, hand)
    Runner(plan_jobs([alloc]), command=fake).run()
    cells = collect(tmp_path / "out" / "alloc", list(alloc.labels))
    assert [c.reused_from for c in cells] == [
        None,
        None,
        *(f"alloc/knapsack@4.0bits/seed{s}" for s in (0, 1)),
    ]
    text = to_markdown(summarise(cells, reference=None))
    assert "| knapsack@4.0bits | 2/2 |" in text and "| C | 2/2 (2 reused) |" in text
    assert "## Reused fine-tunes" in text
    assert (
        "- C seed 1: same plan and seed as alloc/knapsack@4.0bits/seed1: results reused "
        "(its fine-tune and eval were not run again)"
    ) in text


def test_the_dry_run_names_the_twin_a_run_would_take_and_counts_only_what_runs(fake, cli, tmp_path) -> None:
    """Issue 20's ablations: three no-bayes searches chose the joint search's plans, and the dry
    run listed their fine-tunes and evaluations, which the run then did not start."""
    alloc = experiment(tmp_path)
    Runner([job for job in plan_jobs([alloc]) if "/qra@" not in job.name], command=fake).run()
    qra0, qra1 = alloc.cells[2:]
    made(qra1, Plan.from_lists([4, 4, 3], [8, 8, 16]), "search-made")  # seed 1's search chose another
    config, out = tmp_path / "exp.yaml", tmp_path / "out"
    code, stdout, _ = cli("experiment", config, "-o", out, "--dry-run")
    assert code == 0
    same = "(the same plan, seed and options)"
    assert stdout.splitlines() == [
        f"alloc/qra@4.0bits/seed0: takes alloc/knapsack@4.0bits/seed0's results {same}",
        *(f"alloc/qra@4.0bits/seed1: {step.command}" for step in qra1.steps),
        "2 commands to run, in 1 job (4 done); 1 cell takes a done cell's results",
    ]
    code, stdout, _ = cli("experiment", config, "-o", out, "--dry-run", "--no-reuse")
    assert "takes" not in stdout and stdout.splitlines()[-1] == "4 commands to run, in 2 jobs (4 done)"
    # The run does what the dry run said.
    summary = Runner(plan_jobs([alloc]), command=fake).run()
    assert summary.steps_run == 2 and summary.failed == {}
    assert record(qra0).reused_from == "alloc/knapsack@4.0bits/seed0" and record(qra1).reused_from is None
