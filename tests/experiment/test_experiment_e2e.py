"""``qra experiment`` end to end with the real ``qra`` as its children, on the tiny Llama saved to disk.

The whole chain runs for real: experiment file -> qra plan / qra search / qra train /
qra eval --run in child processes -> cell folders -> results.md and results.json. Then the
same command again runs nothing, and one deleted eval.json is the one command a rerun makes.
"""

from __future__ import annotations

import json
import random
import re
import statistics
from pathlib import Path

import pytest

from qradaptor.plan import Plan

pytestmark = [pytest.mark.slow, pytest.mark.embedded]  # ppl_wiki reads the embedded BoolQ passages

LABELS = ("C", "qlora-4", "qra@3.6bits")
"""A hand plan over the tiny model's 3 blocks, a named method, and a search."""
SEEDS = {"C": (0,), "qlora-4": (0,), "qra@3.6bits": (0, 1)}
"""Two seeds where they matter, the search (each seed trains its own search's plan); one for the
rest (an entry's own seeds; each child process costs about 9 s of imports on a 2-core CPU)."""


def experiment_file(folder: Path, model: Path, alpaca: Path, words: Path) -> Path:
    """The experiment: every option as small as the tiny model allows, so each child takes seconds."""
    text = f"""\
name: e2e
model: {model}
seeds: [0, 1]
reference: qlora-4
train: {{data: {alpaca}, max_steps: 2, batch_size: 2, seq_len: 32, eval_size: 2, save_every: 0}}
eval: {{tasks: ppl_wiki, limit: 2, seq_len: 32, batch_size: 2}}
search: {{data: {words}, eval_data: {words}, seq_len: 16, steps: 1, batch_size: 2, eval_batches: 1,
          calibration_samples: 2, population: 2, generations: 1, bayes_iterations: 1,
          group_size: 32, ranks: [4, 8]}}
methods:
  - {{label: C, plan: {{bits: "4x2,2x1", ranks: 4}}, seeds: [0]}}
  - {{label: qlora-4, method: qlora-4, seeds: [0]}}
  - {{label: qra, search: {{}}, budgets: [3.6bits]}}
"""
    path = folder / "e2e.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    """Alpaca rows for qra train and a .txt corpus for qra search, in the word tokenizer's words."""
    rows = [
        {"instruction": "a b", "input": "c" * (i % 2), "output": "a b c" if i % 2 else "c b"}
        for i in range(10)
    ]
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rng = random.Random(0)
    words = tmp_path / "words.txt"
    words.write_text("\n\n".join(" ".join(rng.choice("abc") for _ in range(40)) for _ in range(20)))
    return alpaca, words


def ppl(eval_json: Path) -> float:
    records = json.loads(eval_json.read_text())["results"]
    (value,) = [r["value"] for r in records if (r["task"], r["metric"]) == ("ppl_wiki", "ppl")]
    return value


def quality_row(results_md: str, label: str) -> list[str]:
    """The label's cells in the Quality table (the first table whose row starts with it)."""
    line = next(line for line in results_md.splitlines() if line.startswith(f"| {label} | "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_an_experiment_runs_real_qra_commands_then_resumes_without_rerunning(
    cli, tiny_model_dir: Path, data: tuple[Path, Path], tmp_path: Path
) -> None:
    config, out = experiment_file(tmp_path, tiny_model_dir, *data), tmp_path / "out"
    args = ("experiment", config, "-o", out, "--jobs", 2, "--device", "cpu")
    code, stdout, err = cli(*args)
    logs = "\n".join(f"{p}:\n{p.read_text()}" for p in sorted(out.rglob("*.log")))
    assert code == 0, f"{stdout}\n{err}\n{logs}"
    # 2 searches, C (plan, train, eval), qlora-4 (train, eval) and qra 2 x (train, eval).
    assert "11 commands run in " in stdout and "; 6 jobs done, 0 failed" in stdout

    folder = out / "e2e"
    searches = sorted(p.parent for p in (out / "searches").glob("*/plan.json"))
    assert [p.name.split("-")[:2] for p in searches] == [["3.6bits", "s0"], ["3.6bits", "s1"]]
    assert sorted(p.name for p in (out / "searches").iterdir()) == [*(p.name for p in searches), "logs"]
    assert [p.parent.name for p in sorted((out / "searches" / "logs").glob("*/search.log"))] == [
        p.name for p in searches
    ]
    for label in LABELS:
        for seed in SEEDS[label]:
            cell = folder / label / f"seed{seed}"
            record = json.loads((cell / "cell.json").read_text())
            kept = {key: record[key] for key in ("label", "seed", "state", "error")}
            assert kept == {"label": label, "seed": seed, "state": "done", "error": None}
            trained = json.loads((cell / "train" / "train.json").read_text())
            assert trained["steps"] == 2 and trained["memory"]["avg_rank"] > 0
            assert ppl(cell / "eval.json") > 1
            if label != "qra@3.6bits":
                assert record["search"] is None
                continue
            # Each seed trains the plan of its own search, the one its train command names.
            search = out / "searches" / searches[seed].name
            assert (cell / record["search"]).resolve() == search.resolve()
            train_line = next(c for c in record["commands"] if c.startswith("qra train "))
            assert f" --plan {search / 'plan.json'} " in train_line
            chosen = Plan.from_json((search / "plan.json").read_text())
            assert trained["plan_hash"] == chosen.plan_hash
            assert json.loads((search / "summary.json").read_text())["chosen"]["avg_bits"] <= 3.6
    # The hand plan C is what qra plan made from the file's bits and ranks.
    made = Plan.from_json((folder / "C" / "seed0" / "plan.json").read_text())
    assert (made.block_bits(), made.block_ranks()) == ([4, 4, 2], [4, 4, 4])

    # The tables hold every label with its seeds, and its PPL is the mean of the cells' eval.json.
    text = (folder / "results.md").read_text()
    assert "4 of 4 cells done." in text and "## Search" in text and "## Not done" not in text
    assert not (folder / "C" / "seed1").exists()
    for label in LABELS:
        row = quality_row(text, label)
        values = [ppl(folder / label / f"seed{s}" / "eval.json") for s in SEEDS[label]]
        n = len(values)
        assert row[1] == f"{n}/{n}", row
        spread = r" ± [\d,]+\.\d\d" if n > 1 else ""
        assert re.fullmatch(r"[\d,]+\.\d\d" + spread, row[4]), row
        assert float(row[4].split(" ± ")[0].replace(",", "")) == pytest.approx(
            statistics.fmean(values), abs=0.006
        )
    results = json.loads((folder / "results.json").read_text())
    rows = {r["label"]: r for r in results["rows"]}
    assert list(rows) == list(LABELS) and results["reference"] == "qlora-4"
    assert {label: (r["n_done"], r["n_planned"]) for label, r in rows.items()} == {
        label: (len(seeds), len(seeds)) for label, seeds in SEEDS.items()
    }
    assert rows["qra@3.6bits"]["n_searches"] == 2 and rows["qlora-4"]["tokens_per_s_ratio"] == 1.0
    assert len(results["cells"]) == 4

    # The same command again: everything is done, nothing runs, no result file is rewritten.
    outputs = sorted([*folder.glob("*/seed*/eval.json"), *folder.glob("*/seed*/train/train.json")])
    outputs += [p / "plan.json" for p in searches]
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "0 commands run in " in stdout and "; 4 jobs done, 0 failed" in stdout
    assert {p: p.stat().st_mtime_ns for p in outputs} == stamps

    # One eval.json gone: the rerun runs that one eval, and only it.
    missing = folder / "qlora-4" / "seed0" / "eval.json"
    missing.unlink()
    code, stdout, err = cli(*args)
    assert code == 0, err
    ran = [line for line in stdout.splitlines() if line.startswith(("done ", "FAILED "))]
    assert "1 command run in " in stdout and len(ran) == 1
    assert ran[0].startswith("done e2e/qlora-4/seed0: qra eval (")
    assert missing.is_file()
    assert {p: p.stat().st_mtime_ns for p in outputs if p != missing} == {
        p: t for p, t in stamps.items() if p != missing
    }
    assert "4 of 4 cells done." in (folder / "results.md").read_text()
