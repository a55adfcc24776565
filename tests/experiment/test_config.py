"""Experiment files read into cells: the exact qra command lines of each step, shared searches,
option conversion, and one clear ValueError for each thing a file can get wrong.

Expected argv are written out by hand; nothing is run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from qradaptor.cli.experiment import _check_commands
from qradaptor.experiment.config import load
from qradaptor.experiment.fields import expand_per_block, options_argv
from qradaptor.experiment.runner import plan_jobs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

TINY = """\
name: tiny
description: >
  Two lines of
  description.
model: /models/tiny
seeds: [0, 1]
reference: lora16
train: {epochs: 1, batch_size: 4, text: true, gradient_checkpointing: false}
eval: {tasks: [ppl_wiki, arc_easy], limit: 8}
search: {steps: 3, no_references: true}
methods:
  - {label: lora16, method: lora16, seeds: [0]}
  - {label: C, plan: {bits: "4x2,2x2", ranks: 8}, train: {lr: 0.001}}
  - {label: U, plan: "uniform:4:8"}
  - {label: qra, search: {fixed_rank: 16}, budgets: [3.5bits, 5.0bits]}
  - {label: fixed, search: {}, budgets: [4.0bits], search_seed: 7}
"""
TRAIN = ("--epochs", "1", "--batch-size", "4", "--text")
EVAL = ("--tasks", "ppl_wiki,arc_easy", "--limit", "8")


def digest(argv: list[str]) -> str:
    """The 8 hex digits of a search key: sha256 of the JSON of its argv (the key's definition)."""
    return hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:8]


def write(folder: Path, text: str, name: str = "exp.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def tiny(tmp_path: Path):
    return load(write(tmp_path, TINY, "tiny.yaml"), tmp_path / "out")


def test_cells_are_methods_by_budgets_by_seeds(tiny, tmp_path: Path) -> None:
    assert tiny.name == "tiny" and tiny.description == "Two lines of description."
    assert tiny.source == tmp_path / "tiny.yaml" and tiny.reference == "lora16"
    assert tiny.labels == ("lora16", "C", "U", "qra@3.5bits", "qra@5.0bits", "fixed@4.0bits")
    assert [(c.label, c.seed) for c in tiny.cells] == [
        ("lora16", 0),
        ("C", 0),
        ("C", 1),
        ("U", 0),
        ("U", 1),
        ("qra@3.5bits", 0),
        ("qra@3.5bits", 1),
        ("qra@5.0bits", 0),
        ("qra@5.0bits", 1),
        ("fixed@4.0bits", 0),
        ("fixed@4.0bits", 1),
    ]
    assert [c.method for c in tiny.cells] == ["lora16"] + ["lora"] * 10
    assert [c.budget for c in tiny.cells[5:]] == ["3.5bits"] * 2 + ["5.0bits"] * 2 + ["4.0bits"] * 2
    assert all(c.budget is None and c.search is None for c in tiny.cells[:5])
    out = tmp_path / "out"
    assert tiny.cells[8].folder == out / "tiny" / "qra@5.0bits" / "seed1"


def test_a_method_trains_then_evaluates_its_run(tiny, tmp_path: Path) -> None:
    cell = tiny.cells[0]
    folder = tmp_path / "out" / "tiny" / "lora16" / "seed0"
    train, evaluate = cell.steps
    assert train.verb == "train" and train.done == folder / "train" / "train.json"
    assert train.argv == (
        "/models/tiny",
        "--method",
        "lora16",
        "--seed",
        "0",
        *TRAIN,
        "-o",
        str(folder / "train"),
    )
    assert evaluate.verb == "eval" and evaluate.done == folder / "eval.json"
    assert evaluate.argv == ("--run", str(folder / "train"), *EVAL, "-o", str(folder / "eval.json"))
    assert cell.commands == [
        f"qra train /models/tiny --method lora16 --seed 0 --epochs 1 --batch-size 4 --text -o {folder}/train",
        f"qra eval --run {folder}/train --tasks ppl_wiki,arc_easy --limit 8 -o {folder}/eval.json",
    ]


def test_a_hand_made_plan_takes_qra_plan_options(tmp_path: Path) -> None:
    """A uniform plan with 8-bit scales and zeros (the uniform plan that fits a byte budget)."""
    text = BASE + "methods:\n  - {label: u, plan: {bits: 4, ranks: 4, double_quant: true, group_size: 32}}\n"
    plan = load(write(tmp_path, text), tmp_path / "out").cells[0].steps[0]
    assert plan.argv[:8] == ("--bits", "4", "--ranks", "4", "--double-quant", "--group-size", "32", "-o")


def test_a_hand_made_plan_is_a_plan_step_in_the_cell(tiny, tmp_path: Path) -> None:
    folder = tmp_path / "out" / "tiny" / "C" / "seed1"
    plan, train, evaluate = tiny.cells[2].steps
    assert plan.verb == "plan" and plan.done == folder / "plan.json"
    assert plan.argv == (
        "/models/tiny",
        "--bits",
        "4,4,2,2",
        "--ranks",
        "8",
        "-o",
        str(folder / "plan.json"),
    )
    # The method's own train options come after the shared ones.
    assert train.argv == (
        "/models/tiny",
        "--method",
        "lora",
        "--plan",
        str(folder / "plan.json"),
        "--seed",
        "1",
        *TRAIN,
        "--lr",
        "0.001",
        "-o",
        str(folder / "train"),
    )
    assert evaluate.verb == "eval" and evaluate.done == folder / "eval.json"


def test_the_knapsack_plan_is_made_at_each_budget_in_each_cell(tmp_path: Path) -> None:
    text = "name: k\nmodel: /models/tiny\nseeds: [0, 1]\nmethods:\n"
    text += "  - {label: kn, plan: knapsack, budgets: [4.0bits, 120MB]}\n"
    experiment = load(write(tmp_path, text), tmp_path / "out")
    assert [(c.label, c.budget, c.seed) for c in experiment.cells] == [
        ("kn@4.0bits", "4.0bits", 0),
        ("kn@4.0bits", "4.0bits", 1),
        ("kn@120MB", "120MB", 0),
        ("kn@120MB", "120MB", 1),
    ]
    folder = tmp_path / "out" / "k" / "kn@120MB" / "seed1"
    plan, train, _ = experiment.cells[3].steps
    made = str(folder / "plan.json")
    assert plan.argv == ("/models/tiny", "--baseline", "knapsack", "--budget", "120MB", "-o", made)
    assert train.argv[:6] == ("/models/tiny", "--method", "lora", "--plan", made, "--seed")


SHARED_PROFILE = """\
name: k
model: /models/tiny
seeds: [0, 1]
profile: {samples: 8, seq_len: 512}
search: {no_references: true}
methods:
  - {label: kn, plan: knapsack, budgets: [4.0bits]}
  - {label: qra, search: {}, budgets: [4.0bits]}
  - {label: ablation, search: {no_profile: true, strategy: paper}, budgets: [4.0bits]}
  - {label: U, plan: "uniform:4:16"}
"""


def test_a_shared_profile_runs_once_and_every_search_and_knapsack_reads_it(tmp_path: Path) -> None:
    experiment = load(write(tmp_path, SHARED_PROFILE), tmp_path / "out")
    argv = ["/models/tiny", "--samples", "8", "--seq-len", "512"]
    key = f"profile-{digest(argv)}"
    table = tmp_path / "out" / "profiles" / key / "sensitivity.json"
    knapsack, searched, ablation, uniform = (experiment.cells[i] for i in (0, 2, 4, 6))
    assert knapsack.profile.step.argv == (*argv, "-o", str(table.parent))
    assert knapsack.profile.step.done == table and knapsack.profile.table == table
    plan = knapsack.steps[0]
    assert plan.argv[:6] == ("/models/tiny", "--baseline", "knapsack", "--budget", "4.0bits", "--sensitivity")
    assert plan.argv[6] == str(table)
    assert searched.search.step.argv[-4:-2] == ("--sensitivity", str(table))
    assert searched.search.profile == knapsack.profile and searched.profile == knapsack.profile
    assert "--sensitivity" not in ablation.search.step.argv and ablation.profile is None  # profiles nothing
    assert uniform.profile is None and uniform.search is None
    assert searched.commands[:2] == [knapsack.profile.step.command, searched.search.step.command]

    jobs = plan_jobs([experiment])
    by_name = {job.name: job for job in jobs}
    assert jobs[0].name == f"profiles/{key}" and jobs[0].after is None
    assert jobs[0].log_dir == tmp_path / "out" / "profiles" / "logs" / key
    assert [job.name for job in jobs].count(f"profiles/{key}") == 1
    assert by_name[f"searches/{searched.search.key}"].after == f"profiles/{key}"
    assert by_name[f"searches/{ablation.search.key}"].after is None
    assert by_name["k/kn@4.0bits/seed1"].after == f"profiles/{key}"
    assert by_name["k/qra@4.0bits/seed0"].after == f"searches/{searched.search.key}"
    assert by_name["k/U/seed0"].after is None
    _check_commands([experiment])  # qra profile's own parser takes its options


def test_a_method_may_have_its_own_profile_and_knapsack_options(tmp_path: Path) -> None:
    text = SHARED_PROFILE + (
        "  - label: kdq\n    plan: knapsack\n    budgets: [4.0bits]\n"
        "    profile: {bits: [2, 3, 4, 5, 6, 8], double_quant: true}\n"
        "    knapsack: {bits: [2, 3, 4, 5, 6, 8], double_quant: true}\n"
    )
    experiment = load(write(tmp_path, text), tmp_path / "out")
    shared, own = experiment.cells[0].profile, experiment.cells[-1].profile
    argv = ["/models/tiny", "--bits", "2,3,4,5,6,8", "--double-quant"]
    assert own.step.argv[:4] == tuple(argv) and own.key == f"profile-{digest(argv)}" != shared.key
    plan = experiment.cells[-1].steps[0]
    assert plan.argv[1:9] == (
        "--baseline",
        "knapsack",
        "--budget",
        "4.0bits",
        "--bits",
        "2,3,4,5,6,8",
        "--double-quant",
        "--sensitivity",
    )
    assert plan.argv[9] == str(own.table)
    jobs = plan_jobs([experiment])
    names = [job.name for job in jobs]
    assert names.count(f"profiles/{shared.key}") == names.count(f"profiles/{own.key}") == 1
    assert [job.after for job in jobs if job.name.startswith("k/kdq@")] == [f"profiles/{own.key}"] * 2
    _check_commands([experiment])


def test_without_a_profile_key_the_knapsack_and_the_search_profile_themselves(tiny) -> None:
    assert all(cell.profile is None for cell in tiny.cells)
    assert all("--sensitivity" not in step.argv for cell in tiny.cells for step in cell.steps)


def test_a_plan_string_is_passed_straight_to_train(tiny, tmp_path: Path) -> None:
    folder = tmp_path / "out" / "tiny" / "U" / "seed0"
    assert [s.verb for s in tiny.cells[3].steps] == ["train", "eval"]
    assert tiny.cells[3].steps[0].argv == (
        "/models/tiny",
        "--method",
        "lora",
        "--plan",
        "uniform:4:8",
        "--seed",
        "0",
        *TRAIN,
        "-o",
        str(folder / "train"),
    )


def test_a_searched_method_trains_its_search_plan_per_budget_and_seed(tiny, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cell = tiny.cells[6]  # qra@3.5bits seed 1
    argv = ["/models/tiny", "--budget", "3.5bits", "--seed", "1", "--steps", "3", "--no-references"]
    argv += ["--fixed-rank", "16"]
    key = f"3.5bits-s1-{digest(argv)}"
    assert cell.search is not None and cell.search.key == key
    assert cell.search.step.verb == "search"
    assert cell.search.step.argv == (*argv, "-o", str(out / "searches" / key))
    assert cell.search.plan == out / "searches" / key / "plan.json"
    assert cell.search.step.done == out / "searches" / key / "summary.json"
    assert cell.steps[0].argv[:5] == ("/models/tiny", "--method", "lora", "--plan", str(cell.search.plan))
    assert cell.steps[0].argv[5:7] == ("--seed", "1")
    assert cell.commands[0] == "qra search " + " ".join(argv) + f" -o {out}/searches/{key}"
    assert [s.verb for s in cell.steps] == ["train", "eval"]  # the search is not among its steps
    # Each (budget, seed) has its own search.
    keys = [c.search.key for c in tiny.cells[5:9]]
    assert len(set(keys)) == 4 and [k.split("-s")[0] for k in keys] == ["3.5bits"] * 2 + ["5.0bits"] * 2
    assert tiny.cells[7].search.key.startswith("5.0bits-s0-")


def test_search_seed_fixes_one_search_for_every_seed(tiny, tmp_path: Path) -> None:
    seed0, seed1 = tiny.cells[9], tiny.cells[10]
    argv = ["/models/tiny", "--budget", "4.0bits", "--seed", "7", "--steps", "3", "--no-references"]
    assert seed0.search == seed1.search and seed0.search.key == f"4.0bits-s7-{digest(argv)}"
    # ... while each cell still trains with its own seed.
    assert seed0.steps[0].argv[5:7] == ("--seed", "0") and seed1.steps[0].argv[5:7] == ("--seed", "1")
    jobs = plan_jobs([tiny])
    names = [job.name for job in jobs]
    assert names.count(f"searches/{seed0.search.key}") == 1
    assert [job.after for job in jobs if job.name.startswith("tiny/fixed")] == [
        f"searches/{seed0.search.key}"
    ] * 2


def test_plan_jobs_runs_searches_first_and_cells_after_theirs(tiny, tmp_path: Path) -> None:
    jobs = plan_jobs([tiny])
    cells = tiny.cells
    expected_searches = [cells[i].search.key for i in (5, 6, 7, 8, 9)]
    assert [job.name for job in jobs[:5]] == [f"searches/{k}" for k in expected_searches]
    assert jobs[0].steps == [cells[5].search.step] and jobs[0].cell is None and jobs[0].after is None
    assert jobs[0].log_dir == tmp_path / "out" / "searches" / "logs" / expected_searches[0]
    assert [job.name for job in jobs[5:8]] == ["tiny/lora16/seed0", "tiny/C/seed0", "tiny/C/seed1"]
    assert jobs[6].steps == list(cells[1].steps) and jobs[6].log_dir == cells[1].folder / "logs"
    assert [job.after for job in jobs[5:10]] == [None] * 5
    assert jobs[11].after == f"searches/{cells[6].search.key}"


def test_identical_searches_in_two_files_are_one_job(tiny, tmp_path: Path) -> None:
    other = """\
name: other
model: /models/tiny
seeds: [1, 2]
search: {steps: 3, no_references: true}
methods:
  - {label: mine, search: {fixed_rank: 16}, budgets: [3.5bits]}
  - {label: reordered, search: {fixed_rank: 16, steps: 3}, budgets: [3.5bits], seeds: [1]}
"""
    second = load(write(tmp_path, other, "other.yaml"), tmp_path / "out")
    shared = tiny.cells[6].search  # qra@3.5bits seed 1: the same command
    assert second.cells[0].search == shared
    assert second.cells[1].search.key not in (shared.key, tiny.cells[5].search.key)  # seed 2: its own
    jobs = plan_jobs([tiny, second])
    names = [job.name for job in jobs]
    assert names.count(f"searches/{shared.key}") == 1
    # tiny's 5 searches and other's seed-2 search: the method that repeats a shared option
    # (steps) merges with it into the same command, so it shares "mine"'s search.
    assert len([n for n in names if n.startswith("searches/")]) == 6
    assert second.cells[2].search == shared
    mine = next(job for job in jobs if job.name == "other/mine@3.5bits/seed1")
    assert mine.after == f"searches/{shared.key}"


def test_options_become_flags() -> None:
    options = {"batch_size": 32, "text": True, "compile": False, "data": None, "tasks": ["a", "b", 3]}
    options["lr"] = 2.0e-4
    assert options_argv(options, "train", "x") == [
        "--batch-size",
        "32",
        "--text",
        "--tasks",
        "a,b,3",
        "--lr",
        "0.0002",
    ]
    assert options_argv(None, "eval", "x") == [] and options_argv({}, "eval", "x") == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([1, 2], r"where must be a mapping of qra train options, got \[1, 2\]"),
        ({"Batch": 1}, r"where: option names are like batch_size, got 'Batch'"),
        ({"batch-size": 1}, r"option names are like batch_size, got 'batch-size'"),
        ({"limit": {"a": 1}}, r"where: limit must be a number, a string, true or a list, got \{'a': 1\}"),
        (
            {"seed": 1},
            r"where: seed is set by qra experiment for every cell; .*\(set by it: output, seed, plan,",
        ),
    ],
)
def test_bad_options_are_refused(options, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        options_argv(options, "train", "where")


@pytest.mark.parametrize(
    ("value", "expanded"),
    [(4, "4"), ([4, 4, 2], "4,4,2"), ("4x2,2x3", "4,4,2,2,2"), (" 8 x 2 , 16 ", "8,8,16"), ("3", "3")],
)
def test_expand_per_block(value, expanded: str) -> None:
    assert expand_per_block(value, "w") == expanded


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("4x15,two", r"w parts are N or NxCOUNT \(e\.g\. 4x15,2x15\), got 'two'"),
        ("4x", r"got '4x'"),
        ("", r"w must be a number, a list or like 4x15,2x15, got ''"),
        (True, r"got True"),
        ([], r"got \[\]"),
        ([4, "2"], r"got \[4, '2'\]"),
        (4.5, r"got 4\.5"),
    ],
)
def test_bad_per_block_values_are_refused(value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand_per_block(value, "w")


BASE = "name: e\nseeds: [0]\n"
ONE = "methods:\n  - {label: a, method: lora16}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seeds: [0]\n" + ONE, r"exp.yaml: 'name' is missing"),
        ("name: e\n", r"exp.yaml: 'methods' is missing"),
        (
            BASE + ONE + "seed: 1\n",
            r"exp.yaml: unknown key 'seed'; accepted: name, description, model, seeds,",
        ),
        (
            BASE + "methods:\n  - {label: a, method: lora16, bits: 4}\n",
            r"exp.yaml: methods\[0\]: unknown key 'bits'; accepted: label, method, plan, search, budgets,",
        ),
        (
            BASE + "train: {seed: 1}\n" + ONE,
            r"exp.yaml: train: seed is set by qra experiment for every cell; the file may not set it "
            r"\(set by it:",
        ),
        (
            BASE + "methods:\n  - {label: a, search: {budget: 3bits}, budgets: [3bits]}\n",
            r"methods\[0\]\.search: budget is set by qra experiment .*\(set by it: output, seed, budget,",
        ),
        (
            BASE + "methods:\n  - {label: a, method: lora16, train: {output: x}}\n",
            r"methods\[0\]\.train: output is set by qra experiment",
        ),
        (BASE + "eval: {run: x}\n" + ONE, r"exp.yaml: eval: run is set by qra experiment"),
        (
            BASE + "methods:\n  - {label: a, plan: uniform:4:8, search: {}, budgets: [3bits]}\n",
            r"methods\[0\] \(a\): give plan or search, not both",
        ),
        (
            BASE + "methods:\n  - {label: a, search: {}}\n",
            r"methods\[0\] \(a\): a search needs budgets, a list like \[3\.5bits, 5\.0bits\]",
        ),
        (BASE + "methods:\n  - {label: a, search: {}, budgets: []}\n", r"a search needs budgets"),
        (
            BASE + "methods:\n  - {label: a, method: lora16, budgets: [3bits]}\n",
            r"methods\[0\] \(a\): budgets go with a search or plan: knapsack",
        ),
        (
            BASE + "methods:\n  - {label: a, plan: knapsack}\n",
            r"methods\[0\] \(a\): the knapsack plan needs budgets, a list like \[3\.5bits, 5\.0bits\]",
        ),
        (
            BASE + "methods:\n  - {label: a, method: lora16, search_seed: 1}\n",
            r"\(a\): search_seed is an integer >= 0 and goes with a search",
        ),
        (
            BASE + "methods:\n  - {label: a, search: {}, budgets: [3bits], search_seed: -1}\n",
            r"search_seed is an integer >= 0",
        ),
        (
            "name: e\nseeds: []\n" + ONE,
            r"exp.yaml: seeds must be a non-empty list of integers >= 0, got \[\]",
        ),
        (
            "name: e\nseeds: [0, -1]\n" + ONE,
            r"seeds must be a non-empty list of integers >= 0, got \[0, -1\]",
        ),
        ("name: e\nseeds: 0\n" + ONE, r"seeds must be a non-empty list of integers >= 0, got 0"),
        ("name: e\nseeds: [1, 1]\n" + ONE, r"exp.yaml: seeds repeats a seed: \[1, 1\]"),
        (
            BASE + "methods:\n  - {label: a, method: lora16, seeds: [a]}\n",
            r"methods\[0\]\.seeds must be a non-empty list of integers >= 0, got \['a'\]",
        ),
        (
            BASE + "methods:\n  - {label: a, method: lora16}\n  - {label: a, method: dora}\n",
            r"exp.yaml: labels must be unique, 'a' is used twice",
        ),
        (
            BASE + "methods:\n  - {label: a, search: {}, budgets: [3bits, 3bits]}\n",
            r"labels must be unique, 'a@3bits' is used twice",
        ),
        (
            BASE + "reference: lora32\nmethods:\n  - {label: a, method: lora16}\n  - {label: q, search: {}, "
            "budgets: [3bits]}\n",
            r"exp.yaml: reference 'lora32' is none of the labels \(a, q@3bits\)",
        ),
        (
            BASE + "methods:\n  - {label: a, plan: {bits: '4x2,2xx', ranks: 8}}\n",
            r"methods\[0\]\.plan\.bits parts are N or NxCOUNT \(e\.g\. 4x15,2x15\), got '2xx'",
        ),
        (
            BASE + "methods:\n  - {label: a, plan: {bits: 4}}\n",
            r"methods\[0\]\.plan must be uniform:BITS:RANK, a plan file, or \{bits: \.\.\., ranks: \.\.\.\}",
        ),
        (
            BASE + "methods:\n  - {label: a, plan: {bits: 4, ranks: 8, uniform: '4:8'}}\n",
            r"methods\[0\]\.plan: uniform is set by qra experiment for every cell",
        ),
        (
            BASE + "methods:\n  - {label: a}\n",
            r"methods\[0\] \(a\): needs a method \(e\.g\. lora16, qlora-4\)",
        ),
        (BASE + "methods:\n  - {method: lora16}\n", r"methods\[0\]: 'label' is missing"),
        (
            BASE + "methods:\n  - {label: 'a b', method: lora16}\n",
            r"methods\[0\]\.label must be letters, digits, '\.', '_', '\+' or '-' \(a folder name\), "
            r"got 'a b'",
        ),
        (BASE + "methods:\n  - {label: q@3bits, method: lora16}\n", r"got 'q@3bits'"),
        ("name: ../up\n" + ONE, r"exp.yaml: name must be letters, digits"),
        (BASE + "methods: []\n", r"exp.yaml: methods must be a non-empty list, got \[\]"),
        (BASE + "methods:\n  - lora16\n", r"methods\[0\] must be a mapping with a label, got 'lora16'"),
        (BASE + "profile: 3\n" + ONE, r"exp.yaml: profile must be a mapping of qra profile options, got 3"),
        (BASE + "profile: {output: p}\n" + ONE, r"exp.yaml: profile: output is set by qra experiment"),
        (
            BASE + "methods:\n  - {label: a, method: lora16, profile: {samples: 2}}\n",
            r"methods\[0\] \(a\): profile goes with a search or plan: knapsack",
        ),
        (
            BASE + "methods:\n  - {label: a, method: lora16, knapsack: {double_quant: true}}\n",
            r"methods\[0\] \(a\): knapsack options go with plan: knapsack",
        ),
        (
            BASE + "methods:\n  - {label: a, plan: knapsack, budgets: [4bits], knapsack: {budget: 3bits}}\n",
            r"methods\[0\]\.knapsack: budget is set by qra experiment for every cell",
        ),
        (
            BASE + "methods:\n  - {label: a, search: {no_profile: true}, budgets: [4bits], profile: {}}\n",
            r"methods\[0\] \(a\): its search would not read its profile",
        ),
        (BASE + "model: 3\n" + ONE, r"exp.yaml: model must be a hub id, a directory or a .gguf path, got 3"),
        (BASE + "description: [a]\n" + ONE, r"exp.yaml: description must be text, got \['a'\]"),
        ("- name: e\n- seeds: [0]\n", r"exp.yaml must be a mapping with name, seeds and methods; got list"),
        ("just text\n", r"must be a mapping with name, seeds and methods; got str"),
        ("name: [e\nseeds: 0\n", r"exp.yaml is not valid YAML: "),
    ],
)
def test_each_mistake_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load(write(tmp_path, text), tmp_path / "out")


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"experiment file '.*nowhere\.yaml' does not exist"):
        load(tmp_path / "nowhere.yaml", tmp_path / "out")
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path, tmp_path / "out")  # a folder is no file


def test_the_repeated_label_is_named_with_several_seeds(tmp_path: Path) -> None:
    text = "name: e\nseeds: [0, 1]\nmethods:\n"
    text += "  - {label: b, method: lora16}\n  - {label: a, method: dora}\n  - {label: b, method: qdora}\n"
    with pytest.raises(ValueError, match="'b' is used twice"):
        load(write(tmp_path, text), tmp_path / "out")


def test_boolean_seeds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seeds must be a non-empty list of integers"):
        load(write(tmp_path, "name: e\nseeds: [true]\n" + ONE), tmp_path / "out")


def test_a_number_as_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown key"):
        load(write(tmp_path, BASE + ONE + "1: x\nfoo: y\n"), tmp_path / "out")


def test_the_verbs_parsers_check_every_command(tmp_path: Path) -> None:
    text = BASE + "train: {no_such_option: 1}\n" + ONE
    with pytest.raises(ValueError, match=r"exp.yaml: a makes a command its verb refuses: qra train .*"):
        _check_commands([load(write(tmp_path, text), tmp_path / "out")])
    text = BASE + "methods:\n  - {label: q, search: {steps: many}, budgets: [3bits]}\n"
    with pytest.raises(
        ValueError, match=r"q@3bits makes a command .*argument --steps: invalid int value: 'many'"
    ):
        _check_commands([load(write(tmp_path, text), tmp_path / "out")])


def test_the_tiny_experiments_commands_pass_the_verbs_parsers(tiny) -> None:
    _check_commands([tiny])  # raises on any option its verb refuses


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """Every file of configs/, loaded into one output folder."""
    out = tmp_path_factory.mktemp("paper")
    return {path.stem: load(path, out) for path in sorted(CONFIGS.glob("*.yaml"))}


def test_every_config_loads_and_passes_the_verbs_parsers(paper) -> None:
    assert sorted(paper) == ["ablations", "allocation", "efficiency", "main", "pilot"]
    assert [e.name for e in paper.values()] == ["ablations", "allocation", "efficiency", "main", "pilot"]
    allocation = paper["allocation"]
    assert "knapsack@4.25bits" in allocation.labels and "qra-paper@120MB" in allocation.labels
    _check_commands(list(paper.values()))
    pilot = paper["pilot"]
    labels = ("A", "B", "C", "D", "knapsack@3.5bits", "knapsack-r12@3.5bits", "uniform3-r12", "qlora-nf4")
    assert pilot.labels == labels and len(pilot.cells) == 24
    plan = pilot.cells[6].steps[0]  # C seed 0
    bits, ranks = ",".join(["4"] * 15 + ["2"] * 15), ",".join(["8"] * 15 + ["16"] * 15)
    assert plan.verb == "plan" and plan.argv[:4] == ("--bits", bits, "--ranks", ranks)
    assert all("--tasks suite,mmlu" in c.steps[-1].command for c in pilot.cells)  # the paper's pilot metric
    # The knapsack at C and D's bytes: their ranks average 12 (the default rank 16 is 4.1% more).
    r12 = next(c for c in pilot.cells if c.label == "knapsack-r12@3.5bits").steps[0]
    assert r12.verb == "plan" and "--rank 12" in r12.command and "--budget 3.5bits" in r12.command
    # Uniform at the budget and at their bytes: 3-bit (3.5 bits with the scales), rank 12.
    uniform = next(c for c in pilot.cells if c.label == "uniform3-r12").steps[0]
    assert uniform.verb == "plan" and uniform.argv[:4] == ("--bits", "3", "--ranks", "12")
    nf4 = next(c for c in pilot.cells if c.label == "qlora-nf4")
    assert "--method qlora-nf4 --seed 0" in nf4.steps[0].command and "--rank 8" in nf4.steps[0].command
    main = paper["main"]
    # Table 4's knapsack plans read main's profile (the same qra profile command, one folder).
    efficiency = paper["efficiency"]

    def table(experiment):
        plan = next(c for c in experiment.cells if c.label == "knapsack@4.0bits").steps[0]
        return plan.argv[plan.argv.index("--sensitivity") + 1]

    assert table(efficiency) == table(main)
    assert "qra@4.0bits" in main.labels and "qra@5.5bits" in main.labels and main.reference == "lora16"
    # Ten unsearched labels at three seeds; amq-lora, amq-adalora, and two budgets each of qra,
    # qra-paper, qra-qa and knapsack at three seeds; eight one-seed heuristics.
    assert len(main.cells) == 3 * (10 + 2 + 4 * 2) + 8
    qa = next(c for c in main.cells if c.label == "qra-qa@4.0bits")
    # It selects on the mix's own selection role (qra search's default for embedded:qa-mix).
    assert qa.search.step.command.endswith(f"--data embedded:qa-mix -o {qa.search.step.argv[-1]}")
    adalora16 = next(c for c in main.cells if c.label == "adalora16").steps[0].command
    assert "--method adalora --seed 0" in adalora16 and "--bits 16" in adalora16
    # Every GPU table has the knapsack plan and QLoRA's NF4 (with double quantisation).
    for name in ("main", "pilot", "ablations"):
        assert any(label.startswith("knapsack@") for label in paper[name].labels), name
        assert "qlora-nf4" in paper[name].labels, name


def _keys(experiment, label: str) -> dict[int, str]:
    return {c.seed: c.search.key for c in experiment.cells if c.label == label}


def test_the_ablations_share_searches_with_main(paper) -> None:
    main, ablations = paper["main"], paper["ablations"]
    # The ablations keep the paper strategy, as main's qra-paper does.
    assert _keys(ablations, "joint@4.0bits") == _keys(main, "qra-paper@4.0bits")
    assert _keys(main, "amq-adalora@4.0bits") == _keys(main, "amq-lora@4.0bits")  # one search, two fine-tunes
    assert "rank-only@4.0bits" not in ablations.labels  # ranks cost no bits: refused by qra search
    assert _keys(ablations, "rank-only@120MB")[0] not in _keys(ablations, "joint@120MB").values()
    jobs = plan_jobs(list(paper.values()))
    searches = [job.name for job in jobs if job.name.startswith("searches/")]
    assert len(searches) == len(set(searches))
    # main: 3 seeds x (amq-lora + qra, qra-paper and qra-qa at two budgets) = 21; ablations add
    # bits-only, no-profile and no-bayes at 4.0bits and all five variants at 120MB, x 3 seeds
    # (joint@4.0bits is main's qra-paper); efficiency's three (seed 0) profile themselves, so
    # their cost includes the profile, and share nothing with main, whose searches read one
    # shared profile.
    # allocation: qra (halving, pinned to --steps 20, the full search it ran with) and qra-paper at
    # 5 budgets x 3 seeds; qra-paper on the defaults as main's is, so its 4.0bits searches are
    # main's (3) and its qra-paper@120MB ones are the ablations' joint@120MB (3). main's
    # qra takes the default, forward only under a bits budget: not allocation's qra.
    allocation = paper["allocation"]
    assert _keys(allocation, "qra-paper@4.0bits") == _keys(main, "qra-paper@4.0bits")
    assert not set(_keys(allocation, "qra@4.0bits").values()) & set(_keys(main, "qra@4.0bits").values())
    assert _keys(allocation, "qra-paper@120MB") == _keys(ablations, "joint@120MB")
    # + qra-dq, qra-module, qra-dq-screen (forward only, over qra-dq's profile) at 5 budgets, and
    # qra-dq-ranks (three candidates, one rung) and qra-dq-screen-r4 (forward only, rank 4) at 120MB
    assert len(searches) == 21 + 3 * 3 + 5 * 3 + 15 + 15 - 3 - 3 + 3 + 15 + 15 + 15 + 3 + 3
    profiles = [job.name for job in jobs if job.name.startswith("profiles/")]
    # main, ablations, pilot and allocation share one KL table; allocation's knapsack-dq and qra-dq
    # share their own (bits 2-8, 8-bit scales and zeros), knapsack-module has a per-module one,
    # knapsack-module-dq a per-module one with 8-bit scales and zeros, and knapsack-llama.cpp a
    # symmetric group-32 one (the quantiser its plans are served in)
    assert len(profiles) == 5
    argvs = [" ".join(job.steps[0].argv) for job in jobs if job.name.startswith("profiles/")]
    assert sorted(a.count("--granularity module") for a in argvs) == [0, 0, 0, 1, 1]
    assert sorted(a.count("--quant-method symmetric --group-size 32") for a in argvs) == [0, 0, 0, 0, 1]
    assert sum("--granularity module" in a and "--double-quant" in a for a in argvs) == 1
    served = next(c for c in allocation.cells if c.label == "knapsack-llama.cpp@5.0bits").steps[0].command
    assert "--serve llama.cpp" in served
    # qra-module searches per module over knapsack-module's per-module profile.
    module_search = next(c for c in allocation.cells if c.label == "qra-module@4.0bits").search.step.command
    module_plan = next(c for c in allocation.cells if c.label == "knapsack-module@4.0bits").steps[0].command
    assert "--granularity module" in module_search
    screen = next(c for c in allocation.cells if c.label == "qra-dq-screen@4.5bits").search.step.command
    dq = next(c for c in allocation.cells if c.label == "qra-dq@4.5bits").search.step.command
    assert "--steps 0" in screen and screen.split("--sensitivity ")[1].split()[0] in dq
    sensitivity = module_search.split("--sensitivity ")[1].split()[0]
    assert f"--sensitivity {sensitivity}" in module_plan
