"""The experiment report from hand-built cell folders in the real formats (no model is run).

Search folders are written by the search's own writers (records_to_csv, report.summarise,
Plan.to_json), eval.json by eval.results.to_json; train.json copies the structure that
train/outputs.summary writes (making one for real needs a training run).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from qradaptor.eval.results import EvalRecord
from qradaptor.eval.results import to_json as eval_to_json
from qradaptor.eval.suite import ZERO_SHOT
from qradaptor.experiment.plots import pearson
from qradaptor.experiment.report import LabelRow, Stat, collect, summarise, to_json, to_markdown, write_report
from qradaptor.plan import Plan
from qradaptor.search import report as search_report
from qradaptor.search.records import TrialRecord, records_to_csv
from qradaptor.sensitivity_table import SensitivityTable

MIB = 2**20
PNG = b"\x89PNG\r\n\x1a\n"
ACCS = (0.50, 0.40, 0.70, 0.60, 0.55, 0.65, 0.30)
"""acc of the seven zero-shot tasks in a cell with offset 0: their mean is 3.7 / 7."""


WEIGHTS = 'tiny.gguf stores 3 tensors (2 Q4_1, 1 F32); its "16-bit" base is these dequantised'
"""The provenance sentence every cell's train.json carries."""


def train_json(avg_bits: float, avg_rank: float, tokens_per_s: float, peak_mib: float | None) -> dict:
    """train.json as train/outputs.summary writes it (keys and nesting copied from a real run)."""
    return {
        "method": "lora",
        "method_summary": "LoRA on the base quantised per --plan",
        "model": "/models/tiny",
        "plan_name": "",
        "plan_hash": "3e6bcff168af",
        "config": {"epochs": 1.0, "max_steps": 3, "batch_size": 2, "seq_len": 32, "seed": 0},
        "fingerprint": {"plan_hash": "3e6bcff168af", "method": "lora", "weights": "w", "data": "d"},
        "memory": {
            "avg_bits": avg_bits,
            "avg_rank": avg_rank,
            "weights_bytes": 178944,
            "predicted_peak": 3000 * MIB,
            "predicted_parts": {"weights": 1, "gradients": 1, "optimizer": 1, "activations": 1},
            "trainable_params": 16384,
            "measured_peak": None if peak_mib is None else int(peak_mib * MIB),
        },
        "steps": 3,
        "resumed_from": None,
        "tokens": 50_000,
        "train_seconds": 50.0,
        "tokens_per_second": tokens_per_s * 0.9,
        "steady_tokens_per_second": tokens_per_s,
        "step_seconds": [0.1, 0.1, 0.1],
        "final_train_loss": 2.5,
        "final_eval_loss": 2.4,
        "evals": [[3, 2.4]],
        "losses": [2.7, 2.6, 2.5],
        "device": "cuda",
        "date": "2026-01-01",
        "versions": {"torch": "2", "transformers": "5", "peft": "0.21"},
        "provenance": {"format": "gguf", "tensor_types": {"Q4_1": 2, "F32": 1}, "text": WEIGHTS},
    }


def eval_json(ppl_wiki: float, offset: float) -> str:
    """eval.json through the real writer: the suite's nine tasks, acc = ACCS + offset."""

    def rec(task: str, metric: str, value: float, stderr: float | None) -> EvalRecord:
        return EvalRecord(task, metric, value, stderr, 100, "/models/tiny", "h", "run/adapter", 1.0)

    records = [rec("ppl_wiki", "ppl", ppl_wiki, None), rec("ppl_lambada", "ppl", 2 * ppl_wiki, None)]
    for task, acc in zip(ZERO_SHOT, ACCS, strict=True):
        records += [rec(task, "acc", acc + offset, 0.05), rec(task, "acc_norm", acc + offset + 0.1, math.nan)]
    return eval_to_json(records, {"model": "/models/tiny", "tasks": ["suite"], "zero_shot_avg_acc": None})


def write_search(folder: Path, losses: list[tuple[str, float]], cost: float, pearson_r: float | None) -> None:
    """A ``qra search`` folder as cli/search_output.write_run leaves it (without plots)."""
    bits, ranks = (4, 3, 2), (16, 8, 4)
    records = [
        TrialRecord(i, phase, 0, f"h{i}", bits, ranks, loss, loss + 1, 1000, 3.5 - 0.1 * i, 10.0, tokens=64)
        for i, (phase, loss) in enumerate(losses)
    ]
    searched = [r for r in records if r.phase != "reference"]
    chosen = min(searched, key=lambda r: r.loss)
    summary = search_report.summarise(records, pareto=[chosen.number], chosen_number=chosen.number)
    summary = replace(
        summary,
        budget="3.5 avg bits",
        wall_seconds=99.0,
        search_cost_epochs=cost,
        proxy_tokens=cost * 100_000,
    )
    folder.mkdir(parents=True)
    if pearson_r is not None:
        summary = replace(summary, profiled=True, bits_sensitivity_pearson=pearson_r)
        kl = [[0.3, 0.1, 0.05, 0.001], [0.2, 0.08, 0.04, 0.001], [0.1, 0.05, 0.02, 0.001]]
        sensitivity = {
            "format": 1,
            "bits": [2, 3, 4, 8],
            "kl": kl,
            "tokens": 32,
            "group_size": 32,
            "quant_method": "hqq",
        }
        (folder / "sensitivity.json").write_text(
            json.dumps(sensitivity, indent=2)
        )  # SensitivityTable.to_dict
    summary.save(folder)
    (folder / "trials.csv").write_text(records_to_csv(records))
    plan = Plan.from_lists(list(chosen.bits), list(chosen.ranks), group_size=32)
    (folder / "plan.json").write_text(plan.to_json() + "\n")


def write_cell(
    root: Path, label: str, seed: int, *, state: str = "done", search: str | None = None, **run
) -> Path:
    folder = root / "pilot" / label / f"seed{seed}"
    (folder / "train").mkdir(parents=True)
    cell = {
        "experiment": "pilot",
        "label": label,
        "method": "lora" if search else label,
        "budget": "3.5bits" if search else None,
        "seed": seed,
        "search": None if search is None else f"../../../searches/{search}",
        "commands": [f"qra train --seed {seed}", "qra eval --run train -o eval.json"],
        "state": state,
        "error": "CUDA out of memory" if state == "failed" else None,
    }
    (folder / "cell.json").write_text(json.dumps(cell, indent=2))
    if state == "done":
        (folder / "train" / "train.json").write_text(json.dumps(train_json(*run["train"]), indent=1))
        if "eval" in run:
            (folder / "eval.json").write_text(eval_json(*run["eval"]))
    return folder


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """pilot: lora16 (2 done, 1 failed), qlora-4 (1 done, 1 done without eval.json),
    qra@3.5bits (3 done: seeds 0 and 1 share search A, seed 2 has search B)."""
    write_search(tmp_path / "searches" / "A", [("reference", 3.0), ("initial", 2.9), ("initial", 3.1),
                 ("nsga2", 2.7), ("bayes", 2.8)], cost=0.5, pearson_r=0.8)  # fmt: skip
    write_search(
        tmp_path / "searches" / "B", [("reference", 3.0), ("initial", 2.6), ("bayes", 2.5)], 0.3, None
    )
    write_cell(tmp_path, "lora16", 0, train=(16.0, 16.0, 1000.0, 2000.0), eval=(10.0, 0.0))
    write_cell(tmp_path, "lora16", 1, train=(16.0, 16.0, 1200.0, 2100.0), eval=(12.0, 0.01))
    write_cell(tmp_path, "lora16", 2, state="failed")
    write_cell(tmp_path, "qlora-4", 0, train=(4.5, 16.0, 800.0, None), eval=(12.5, -0.1))
    write_cell(tmp_path, "qlora-4", 1, train=(4.5, 16.0, 800.0, None))  # eval.json never came back
    for seed, (search, tps) in enumerate([("A", 1500.0), ("A", 1700.0), ("B", 1600.0)]):
        write_cell(
            tmp_path, "qra@3.5bits", seed, search=search, train=(3.5, 9.0, tps, 1000.0), eval=(11.0, 0.02)
        )
    return tmp_path / "pilot"


LABELS = ["lora16", "qlora-4", "qra@3.5bits"]


def test_collect_reads_every_cell_in_label_order(experiment: Path) -> None:
    cells = collect(experiment, ["qra@3.5bits", "lora16"])
    assert [(c.label, c.seed) for c in cells] == [("qra@3.5bits", s) for s in range(3)] + [
        ("lora16", s) for s in range(3)
    ]
    assert [c.label for c in collect(experiment)][::3] == ["lora16", "qlora-4", "qra@3.5bits"]  # sorted
    qra, failed = cells[0], cells[5]
    assert qra.done and qra.method == "lora" and qra.budget == "3.5bits" and qra.folder == "qra@3.5bits/seed0"
    assert (
        qra.avg_bits == 3.5 and qra.avg_rank == 9.0 and qra.tokens_per_s == 1500.0 and qra.peak_mib == 1000.0
    )
    assert qra.train_tokens == 50_000 and qra.predicted_peak_mib == 3000.0
    assert qra.metrics["ppl_wiki/ppl"] == 11.0 and qra.metrics["ppl_lambada/ppl"] == 22.0
    assert qra.metrics["arc_easy/acc"] == pytest.approx(0.52)
    assert "arc_easy/acc_norm" in qra.metrics  # a NaN stderr is no reason to drop the value
    search = qra.search
    assert search is not None and search.path == "../searches/A"
    assert search.evaluations == 4 and search.total_evaluations == 5 and search.seconds == pytest.approx(40.0)
    assert search.initial_evaluations == 2
    assert search.best_so_far == (2.9, 2.9, 2.7, 2.7) and search.chosen_loss == 2.7
    assert search.block_bits == (4, 3, 2) and search.block_ranks == (16, 8, 4)
    assert search.sensitivity == (0.3, 0.2, 0.1) and search.pearson == 0.8 and search.cost_epochs == 0.5
    assert (
        cells[2].search is not None
        and cells[2].search.sensitivity is None
        and cells[2].search.pearson is None
    )
    assert not failed.done and failed.state == "failed" and failed.error == "CUDA out of memory"
    assert failed.avg_bits is None and failed.metrics == {} and failed.commands[0] == "qra train --seed 2"


def test_summarise_gives_hand_computed_means_and_stds(experiment: Path) -> None:
    summary = summarise(collect(experiment, LABELS), reference="lora16")
    lora, qlora, qra = summary.rows
    assert [r.label for r in summary.rows] == LABELS and summary.reference == "lora16"
    s = lora.stats
    assert s["ppl_wiki/ppl"].mean == 11.0 and s["ppl_wiki/ppl"].std == pytest.approx(math.sqrt(2))
    assert s["tokens_per_s"].mean == 1100.0 and s["tokens_per_s"].std == pytest.approx(100 * math.sqrt(2))
    assert s["avg_acc"].mean == pytest.approx(3.7 / 7 + 0.005) and s["avg_acc"].std == pytest.approx(
        0.01 / math.sqrt(2)
    )
    assert s["avg_acc_norm"].mean == pytest.approx(3.7 / 7 + 0.105)
    assert s["avg_bits"].mean == 16.0 and s["avg_bits"].std == 0.0 and s["peak_mib"].mean == 2050.0
    # Failed and eval-less cells are counted as planned but stay out of every mean.
    assert (lora.n_done, lora.n_planned) == (2, 3) and s["ppl_wiki/ppl"].n == 2
    assert (qlora.n_done, qlora.n_planned) == (1, 2)
    assert qlora.stats["ppl_wiki/ppl"].mean == 12.5 and qlora.stats["ppl_wiki/ppl"].std is None
    assert qlora.stats["peak_mib"].mean is None and qlora.stats["peak_mib"].n == 0
    assert lora.tokens_per_s_ratio == 1.0 and qra.tokens_per_s_ratio == pytest.approx(1600 / 1100)
    assert qlora.tokens_per_s_ratio == pytest.approx(800 / 1100)
    # Search numbers are over distinct searches (A, B), not over seeds (A, A, B).
    q = qra.stats
    assert qra.n_searches == 2 and lora.n_searches == 0 and "search_evaluations" not in s
    assert q["search_evaluations"].mean == 3.0 and q["search_evaluations"].std == pytest.approx(math.sqrt(2))
    assert q["search_epochs"].mean == pytest.approx(0.4) and q["search_seconds"].mean == pytest.approx(30.0)
    assert q["search_loss"].mean == pytest.approx(2.6) and q["search_avg_bits"].mean == pytest.approx(3.25)
    assert q["search_pearson"].mean == 0.8 and q["search_pearson"].n == 1
    # Gain after the initial population: A 2.9 -> 2.7, B 2.6 -> 2.5. Plan bits (4, 3, 2) by depth.
    assert q["search_gain"].mean == pytest.approx(0.15) and q["search_gain"].std == pytest.approx(
        0.05 * math.sqrt(2)
    )
    assert q["search_bits_early"].mean == 4.0 and q["search_bits_late"].mean == 2.5


def _set_device_name(experiment: Path, label: str, name: str, seeds: Sequence[int] = (0, 1, 2)) -> None:
    """train.json's device_name of a label's done cells, as train/outputs.summary records a GPU's."""
    for seed in seeds:
        path = experiment / label / f"seed{seed}" / "train" / "train.json"
        if path.exists():
            path.write_text(json.dumps({**json.loads(path.read_text()), "device_name": name}, indent=1))


def test_a_ratio_only_for_labels_trained_on_the_references_device(experiment: Path) -> None:
    # The efficiency run of 2026-11-23 was on H200s and its later cells on an H100: a ratio across
    # them measures the cards. Those rows get none, and the table says where each label trained.
    for label in ("lora16", "qra@3.5bits"):
        _set_device_name(experiment, label, "NVIDIA H200")
    _set_device_name(experiment, "qlora-4", "NVIDIA H100 80GB HBM3")
    summary = summarise(collect(experiment, LABELS), reference="lora16")
    lora, qlora, qra = summary.rows
    assert lora.trained_on == ("NVIDIA H200",) and qlora.trained_on == ("NVIDIA H100 80GB HBM3",)
    assert lora.tokens_per_s_ratio == 1.0 and qra.tokens_per_s_ratio == pytest.approx(1600 / 1100)
    assert qlora.tokens_per_s_ratio is None
    text = to_markdown(summary)
    assert "| method | trained on | avg bits |" in text
    assert "| qlora-4 | NVIDIA H100 80GB HBM3 | 4.50 | – | 800 | – |" in text
    assert "| lora16 | NVIDIA H200 | 16.00 ± 0.00 |" in text
    # A reference trained on two devices has no one base: no label gets a ratio.
    _set_device_name(experiment, "lora16", "NVIDIA H100 80GB HBM3", seeds=(1,))
    summary = summarise(collect(experiment, LABELS), reference="lora16")
    assert summary.rows[0].trained_on == ("NVIDIA H100 80GB HBM3", "NVIDIA H200")
    assert all(r.tokens_per_s_ratio is None for r in summary.rows)


def test_one_device_for_every_cell_gets_no_trained_on_column(experiment: Path) -> None:
    summary = summarise(collect(experiment, LABELS), reference="lora16")
    assert all(r.trained_on == ("cuda",) for r in summary.rows)  # no device_name: the device
    assert "| trained on |" not in to_markdown(summary)


def test_no_reference_gives_no_ratio(experiment: Path) -> None:
    for reference in (None, "lora32"):
        summary = summarise(collect(experiment, LABELS), reference=reference)
        assert summary.reference is None and all(r.tokens_per_s_ratio is None for r in summary.rows)
        text = to_markdown(summary)  # an all-"–" ratio column is left out
        assert "| tokens/s |" in text and "| x " not in text and "| x reference |" not in text


def test_markdown_holds_the_formatted_cells(experiment: Path) -> None:
    text = to_markdown(summarise(collect(experiment, LABELS)))
    lines = text.splitlines()
    assert "6 of 8 cells done." in lines
    assert "Measured on (train.json): 2026-01-01, cuda, peft 0.21, torch 2, transformers 5." in lines
    weights = lines.index("Model weights (train.json provenance):")
    assert lines[weights + 2] == f"- {WEIGHTS}" and lines[weights + 3] == ""
    lora = next(line for line in lines if line.startswith("| lora16 | 2/3 | 16.00 ± 0.00 | 16.0 ± 0.0 |"))
    assert "| 11.00 ± 1.41 | 22.00 ± 2.83 | 50.5 ± 0.7 |" in lora and lora.endswith("| 53.4 ± 0.7 |")
    assert "| qlora-4 | 1/2 | 4.50 | 16.0 | 12.50 | 25.00 | 40.0 |" in text
    assert "| lora16 | 16.00 ± 0.00 | 2,050.0 ± 70.7 | 1,100 ± 141 | 1.00 | – | – | – | – |" in lines
    assert "| qlora-4 | 4.50 | – | 800 | 0.73 | – | – | – | – |" in lines
    qra = "| qra@3.5bits | 3.50 ± 0.00 | 1,000.0 ± 0.0 | 1,600 ± 100 | 1.45 | 3 ± 1 | 30.0 ± 14.1 |"
    # Search tokens over each cell's 50,000 fine-tune tokens: A's 50,000 twice, B's 30,000.
    assert f"{qra} 0.400 ± 0.141 | 0.87 ± 0.23 |" in lines
    search_line = "| qra@3.5bits | 2 | 3.25 ± 0.07 | 2.6000 ± 0.1414 | 0.150 ± 0.071 | 4.00 ± 0.00 |"
    search_line += " 2.50 ± 0.00 | 0.80 |"
    assert search_line in lines
    assert "- lora16 seed 2: failed (CUDA out of memory)" in lines
    assert "- qlora-4 seed 1: done (eval.json missing)" in lines


def test_json_round_trips_rows_and_cells(experiment: Path) -> None:
    summary = summarise(collect(experiment, LABELS))
    data = json.loads(to_json(summary))
    assert data["experiment"] == "pilot" and data["reference"] == "lora16"
    assert data["rows"] == [json.loads(json.dumps(asdict(r))) for r in summary.rows]
    assert data["rows"][0]["stats"]["ppl_wiki/ppl"] == {
        "mean": 11.0,
        "std": pytest.approx(math.sqrt(2)),
        "n": 2,
    }
    assert len(data["cells"]) == 8 and data["cells"][0]["commands"][1] == "qra eval --run train -o eval.json"
    assert data["cells"][0]["avg_acc"] == pytest.approx(3.7 / 7)
    assert data["cells"][-1]["search"]["best_so_far"] == [2.6, 2.5]


def test_a_module_profile_is_read_per_block_and_plotted(experiment: Path) -> None:
    """A per-module search's sensitivity.json has a row per (block, module); the report sums each
    block's rows so the profile lines up with the plan's blocks (the sixth GPU run's report
    stopped on "sensitivity has 210 blocks, its plan 30")."""
    pytest.importorskip("matplotlib")
    table = SensitivityTable(
        bits=(2, 4),
        kl=((0.2, 0.02), (0.1, 0.01), (0.1, 0.0), (0.1, 0.0), (0.05, 0.0), (0.05, 0.0)),
        tokens=32,
        group_size=32,
        quant_method="hqq",
        granularity="module",
        modules=("self_attn.q_proj", "mlp.down_proj"),
    )
    (experiment.parent / "searches" / "A" / "sensitivity.json").write_text(json.dumps(table.to_dict()))
    cells = collect(experiment, ["qra@3.5bits"])
    assert cells[0].search is not None and cells[0].search.sensitivity == pytest.approx((0.3, 0.2, 0.1))
    paths = write_report(experiment, summarise(cells), cells)
    assert "sensitivity_bits.png" in [p.name for p in paths]


def test_write_report_writes_tables_and_plots(experiment: Path) -> None:
    pytest.importorskip("matplotlib")
    cells = collect(experiment, LABELS)
    paths = write_report(experiment, summarise(cells), cells)
    names = [
        "results.md",
        "results.json",
        "metrics.png",
        "efficiency.png",
        "allocation.png",
        "convergence.png",
        "sensitivity_bits.png",
    ]
    assert [p.name for p in paths] == names
    assert json.loads((experiment / "results.json").read_text())["experiment"] == "pilot"
    for path in paths[2:]:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
    assert not [p for p in experiment.iterdir() if p.name.startswith(".")]  # no temp file left


def test_no_search_plots_without_searches(experiment: Path) -> None:
    pytest.importorskip("matplotlib")
    cells = collect(experiment, ["lora16"])
    paths = write_report(experiment, summarise(cells), cells)
    assert [p.name for p in paths] == ["results.md", "results.json", "metrics.png", "efficiency.png"]
    assert "## Search" not in (experiment / "results.md").read_text()


def test_pearson_is_hand_checked() -> None:
    assert pearson([0.3, 0.2, 0.1], [4, 3, 2]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [2, 1, 0]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [4, 4, 4]) is None and pearson([1], [2]) is None


def _rewrite(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (
            lambda d: (d / "lora16/seed0/train/train.json").unlink(),
            r"lora16/seed0/train/train.json: file is missing",
        ),
        (lambda d: (d / "lora16/seed1/eval.json").write_text("{"), r"lora16/seed1/eval.json: not valid JSON"),
        (lambda d: (d / "lora16/seed1/eval.json").write_text("{}"), r"eval.json: key 'results' is missing"),
        (
            lambda d: _rewrite(d / "lora16/seed0/train/train.json", lambda t: t["memory"].pop("avg_bits")),
            r"train.json: key 'avg_bits' is missing",
        ),
        (
            lambda d: _rewrite(d / "lora16/seed0/cell.json", lambda c: c.update(seed="0")),
            r"lora16/seed0/cell.json: field 'seed' must be an integer, got '0'",
        ),
        (
            lambda d: _rewrite(d / "lora16/seed0/cell.json", lambda c: c.pop("state")),
            r"cell.json: field 'state' is missing",
        ),
        (
            lambda d: _rewrite(d / "lora16/seed0/cell.json", lambda c: c.update(state="finished")),
            r"field 'state' must be one of \('pending', 'running', 'done', 'failed', 'stopped'\), "
            r"got 'finished'",
        ),
        (lambda d: (d / "lora16/seed0/cell.json").write_text("[]"), r"cell.json: must hold a JSON object"),
        (
            lambda d: (d.parent / "searches/B/summary.json").unlink(),
            r"searches/B/summary.json: file is missing",
        ),
        (
            lambda d: (d.parent / "searches/A/trials.csv").write_text("x\n1\n"),
            r"searches/A/trials.csv: not a",
        ),
    ],
)
def test_bad_files_are_one_clear_error_naming_the_file(experiment: Path, break_it, message: str) -> None:
    break_it(experiment)
    with pytest.raises(ValueError, match=message):
        collect(experiment, LABELS)


def test_missing_folders_are_clear_errors(experiment: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no seed<k>/cell.json for label 'lora32'; found \['lora16'"):
        collect(experiment, ["lora16", "lora32"])
    with pytest.raises(ValueError, match="no such folder"):
        collect(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no <label>/seed<k>/cell.json in it"):
        collect(tmp_path / "searches")
    with pytest.raises(ValueError, match="at least one CellResult"):
        summarise([])


def test_the_report_imports_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys, qradaptor.experiment.report; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_gain_needs_a_stage_after_the_initial_population(tmp_path: Path) -> None:
    from qradaptor.experiment.cells import read_search
    from qradaptor.experiment.report import _gain_after_initial

    write_search(tmp_path / "only", [("initial", 2.9), ("initial", 2.8)], 0.1, None)
    write_search(tmp_path / "later", [("initial", 2.9), ("nsga2", 3.0), ("bayes", 2.4)], 0.1, None)
    assert _gain_after_initial(read_search(tmp_path / "only", tmp_path)) is None
    assert _gain_after_initial(read_search(tmp_path / "later", tmp_path)) == pytest.approx(0.5)


def test_columns_nothing_measured_are_left_out(tmp_path: Path) -> None:
    """A perplexity-only experiment (like configs/efficiency.yaml) gets no empty accuracy columns."""
    folder = write_cell(tmp_path, "lora16", 0, train=(16.0, 16.0, 1000.0, 2000.0), eval=(10.0, 0.0))
    records = [EvalRecord("ppl_wiki", "ppl", 10.0, None, 16, "/models/tiny", "h", "run/adapter", 1.0)]
    (folder / "eval.json").write_text(eval_to_json(records, {"model": "/models/tiny", "tasks": ["ppl_wiki"]}))
    lines = to_markdown(summarise(collect(tmp_path / "pilot"))).splitlines()
    assert "| method | seeds | avg bits | avg rank | PPL wiki |" in lines
    assert "| lora16 | 1/1 | 16.00 | 16.0 | 10.00 |" in lines
    assert "## Zero-shot acc_norm (%)" not in lines
    assert "| method | avg bits | peak MiB | tokens/s | x lora16 |" in lines


def test_mmlu_gets_a_column_where_measured(tmp_path: Path) -> None:
    """The pilot study's metric (paper Fig. 1) is MMLU 5-shot: a column of its own, in percent."""
    for seed, acc in ((0, 0.25), (1, 0.27)):
        folder = write_cell(tmp_path, "A", seed, train=(2.5, 8.0, 1000.0, 2000.0), eval=(10.0, 0.0))
        records = [
            EvalRecord("ppl_wiki", "ppl", 10.0, None, 16, "/models/tiny", "h", "run/adapter", 1.0),
            EvalRecord("mmlu", "acc", acc, 0.01, 100, "/models/tiny", "h", "run/adapter", 1.0),
        ]
        meta = {"model": "/models/tiny", "tasks": ["ppl_wiki", "mmlu"]}
        (folder / "eval.json").write_text(eval_to_json(records, meta))
    lines = to_markdown(summarise(collect(tmp_path / "pilot"))).splitlines()
    assert "| method | seeds | avg bits | avg rank | PPL wiki | MMLU 5-shot |" in lines
    assert "| A | 2/2 | 2.50 ± 0.00 | 8.0 ± 0.0 | 10.00 ± 0.00 | 26.0 ± 1.4 |" in lines


def test_panels_draw_only_what_was_measured(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from qradaptor.experiment.plots import EFFICIENCY_PANELS, METRIC_PANELS, measured, plot_panels
    from qradaptor.experiment.report import LabelRow, Stat

    ppl_only = LabelRow("lora16", "lora16", None, 1, 1, {"ppl_wiki/ppl": Stat(25.0, None, 1)}, None, 0)
    assert measured([ppl_only], "ppl_wiki/ppl") and not measured([ppl_only], "avg_acc")
    plot_panels([ppl_only], METRIC_PANELS, tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match=r"rows must measure one of \['tokens_per_s', 'peak_mib'\]"):
        plot_panels([ppl_only], EFFICIENCY_PANELS, tmp_path / "efficiency.png")
    assert not (tmp_path / "efficiency.png").exists()


def test_the_efficiency_table_says_which_device_each_labels_searches_ran_on(experiment: Path) -> None:
    from qradaptor.runfolder.search_run import SearchSettings

    # A's config.json: the CPU (fp32) at the quick preset, which `qra search` picks on the CPU
    # when none is given; B's: the GPU with no dtype or preset recorded (an older search).
    searches = experiment.parent / "searches"
    cpu = {"device": "cpu", "dtype": "fp32", "preset": "quick"}
    SearchSettings(cpu, "qra search ...").save(searches / "A")
    SearchSettings({"device": "cuda"}, "qra search ...").save(searches / "B")
    summary = summarise(collect(experiment, LABELS), reference="lora16")
    lora, _, qra = summary.rows
    assert qra.search_devices == ("cpu fp32 quick preset", "cuda") and lora.search_devices == ()
    table = to_markdown(summary).split("## Efficiency")[1].split("\n\n")[1].splitlines()
    assert table[0].endswith("| search ran on |")
    assert table[2 + LABELS.index("qra@3.5bits")].endswith("| cpu fp32 quick preset, cuda |")
    assert table[2 + LABELS.index("lora16")].endswith("| – |")


def test_a_search_without_config_json_has_no_device(experiment: Path) -> None:
    summary = summarise(collect(experiment, LABELS), reference="lora16")
    assert summary.rows[2].search_devices == ()
    header = to_markdown(summary).split("## Efficiency")[1].split("\n\n")[1].splitlines()[0]
    assert "search ran on" not in header  # a column nothing measured is left out


def test_an_unmeasured_bar_says_n_a_inside_its_panel() -> None:
    pytest.importorskip("matplotlib")
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qradaptor.experiment.plots import _bars
    from qradaptor.experiment.report import LabelRow, Stat

    done = LabelRow("B", "B", None, 1, 1, {"mmlu/acc": Stat(0.243, 0.001, 3)}, None, 0)
    pending = LabelRow("D", "D", None, 0, 3, {}, None, 0)
    fig, ax = plt.subplots()
    try:
        _bars(ax, [done, pending], "mmlu/acc", 100.0, "MMLU 5-shot acc (%)")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        where = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts if t.get_text()}
        assert set(where) == {"24.3", "n/a"}
        box, panel = where["n/a"], ax.get_window_extent(renderer)
        assert all(math.isfinite(v) for v in box.bounds)
        assert panel.x0 <= box.x0 and box.x1 <= panel.x1 and panel.y0 <= box.y0 <= panel.y1
    finally:
        plt.close(fig)


def test_efficiency_bars_take_a_colour_per_device_where_devices_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Table 4 holds H200 cells of 2026-11-23 and H100 cells of 2026-12-07: their tokens/s bars
    # must not read as one series. One device for all keeps one colour and no legend.
    pytest.importorskip("matplotlib")
    from qradaptor import plotting
    from qradaptor.experiment.plots import EFFICIENCY_PANELS, plot_panels

    figures: list = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: figures.append(fig))
    stats = {"tokens_per_s": Stat(1000.0, None, 1), "peak_mib": Stat(30000.0, None, 1)}

    def row(label: str, device: str) -> LabelRow:
        return LabelRow(label, label, None, 1, 1, stats, None, 0, (), (device,))

    rows = [row("lora16", "NVIDIA H200"), row("qlora-4", "NVIDIA H200"), row("knapsack", "NVIDIA H100")]
    try:
        plot_panels(rows, EFFICIENCY_PANELS, tmp_path / "efficiency.png", by_device=True)
        plot_panels(rows[:2], EFFICIENCY_PANELS, tmp_path / "efficiency.png", by_device=True)
        mixed, single = figures
        for ax in mixed.axes:
            colours = [tuple(p.get_facecolor()) for p in ax.patches]
            assert colours[0] == colours[1] != colours[2]
            assert [t.get_text() for t in ax.get_legend().get_texts()] == ["NVIDIA H200", "NVIDIA H100"]
        for ax in single.axes:
            assert len({tuple(p.get_facecolor()) for p in ax.patches}) == 1 and ax.get_legend() is None
    finally:
        import matplotlib.pyplot as plt

        for fig in figures:
            plt.close(fig)
