"""What a forward-only search (``qra search --steps 0``) would have chosen, replayed from searches
that ran the full halving search.

Every halving search records its screen: each candidate's held-out loss before any tuning
(``screened.csv``, rung 0, the knapsack plan among them). The forward-only search chooses the
lowest of those (plus its own Bayes picks, not replayed here). For each allocation cell of an
experiment folder that ran a search, this prints the plan the full search chose, the plan the
screen ranks first, whether they are the same plan (or the same bits with other ranks), the
proxy tokens the full search spent against the cell's own fine-tune, and the cell's fine-tuned
ppl_wiki; then, per label, the mean fine-tuned ppl_wiki of the cells whose plan the screen's
choice equals. Read-only; no model is loaded.

    python benchmarks/screen_replay.py docs/results/paper          # the committed GPU runs
    python benchmarks/screen_replay.py docs/results/archive/dq-clamped-step   # and the archived ones
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def screen_best(search: Path) -> dict[str, str]:
    """The rung-0 record of lowest loss (ties: the earlier), the knapsack plan's among them."""
    rows = [r for r in csv.DictReader((search / "screened.csv").open()) if r["generation"] == "0"]
    return min(rows, key=lambda r: (float(r["loss"]), int(r["number"])))


def ppl_wiki(cell: Path) -> float | None:
    """The cell's fine-tuned ppl_wiki from eval.json, None if it has none."""
    path = cell / "eval.json"
    if not path.is_file():
        return None
    found = [r["value"] for r in json.loads(path.read_text())["results"] if r.get("task") == "ppl_wiki"]
    return float(found[0]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path, help="an experiment folder (with allocation/ and searches/)")
    args = parser.parse_args()
    print("| cell | full search chose | screen's first | same plan | proxy / fine-tune tokens | PPL wiki |")
    print("|---|---|---|---|---:|---:|")
    by_plan: dict[str, list[float]] = {}
    for cell_json in sorted((args.experiment / "allocation").glob("*/seed*/cell.json")):
        cell = cell_json.parent
        meta = json.loads(cell_json.read_text())
        train_json = cell / "train" / "train.json"
        if meta.get("state") != "done" or not train_json.is_file():
            continue
        train = json.loads(train_json.read_text())
        ppl = ppl_wiki(cell)
        if ppl is not None:
            by_plan.setdefault(f"{train['method']} {train['plan_hash']}", []).append(ppl)
        if not meta.get("search"):
            continue
        search = (cell / meta["search"]).resolve()
        summary = json.loads((search / "summary.json").read_text())
        if summary.get("strategy") != "halving" or not (search / "screened.csv").is_file():
            continue  # the paper strategy, or a forward-only search (its screen is its top rung)
        chosen, first = summary["chosen"], screen_best(search)
        same_bits = " ".join(str(b) for b in chosen["bits"]) == first["bits"]
        same = "yes" if chosen["plan_hash"] == first["plan_hash"] else ("bits" if same_bits else "no")
        ratio = summary["proxy_tokens"] / train["tokens"]
        label = f"{meta['label']} s{meta['seed']}"
        ppl_text = "-" if ppl is None else f"{ppl:.2f}"
        print(
            f"| {label} | {chosen['phase']} {chosen['plan_hash']} | {first['phase']} {first['plan_hash']} "
            f"| {same} | {ratio:.2f} | {ppl_text} |"
        )
    print("\nFine-tuned ppl_wiki by training method and plan (every cell of the folder that trained it):")
    for plan, values in sorted(by_plan.items()):
        print(f"  {plan}: {', '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
