"""How well the search's cheap scores order the fine-tuned cells of an experiment.

``fidelity_tau.py`` fine-tunes its own plans briefly; this reads what ``qra experiment`` already
fine-tuned with the full recipe (three seeds each) and asks the same question of those plans.
Per distinct plan among the done cells (bitsandbytes NF4 cells left out: their base is not our
quantiser), it gives:

- **knapsack objective**: the summed KL of the plan's bits in the profile made with the plan's
  own quantiser (granularity, group size, method, 8-bit metadata), from ``--profiles``; 0 at 16
  bits; blank where no profile of the experiment matches;
- **rung 0**: the plan's held-out loss on the search's selection text, forward only, as the
  screen scores it (``selection_loss.selection_evaluator``, ``--windows`` of 512 tokens);
- **final**: the mean test perplexity over the plan's done cells (ppl_wiki; LAMBADA beside it).

It prints the table and Kendall tau-b against the final perplexity, over all plans and over the
pairs within one budget (a bits budget, or a byte budget by its label; a method's uniform plan
by its stored bits, e.g. qlora-4 at 4.5bits). ``--out FILE`` keeps the rung-0 losses, so a run
again only scores new plans. The model is the embedded SmolLM2-135M-Instruct in fp32 (its
"16-bit" is the Q4_1 GGUF dequantised).

    python benchmarks/fidelity_cells.py --experiment docs/results/paper/allocation \\
        --profiles docs/results/paper/profiles --out fidelity_cells.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from qradaptor.correlation import kendall_tau
from qradaptor.experiment.cells import collect
from qradaptor.plan import Plan
from qradaptor.sensitivity_table import SensitivityTable

NF4_METHODS = ("qlora-nf4", "qlora-nf4-nodq")


def done_plans(experiment: Path) -> dict[str, dict]:
    """Distinct trained plans of the done cells: hash -> plan, labels, budget, perplexities."""
    found: dict[str, dict] = {}
    if not any(experiment.glob("*/seed*/cell.json")):
        return found  # collect refuses a folder without cells; main says none is done
    try:
        cells = collect(experiment)
    except ValueError as err:  # a cell's file not in its format, named
        raise SystemExit(str(err)) from None
    for cell in cells:
        plan_json = experiment / cell.folder / "train" / "plan.json"
        if not cell.done or not plan_json.is_file() or cell.method in NF4_METHODS:
            continue  # a reused cell has no plan of its own: its twin is counted
        plan = Plan.from_json(plan_json.read_text())
        budget = cell.budget or f"{cell.avg_bits:g}bits"  # a method's uniform plan by its stored bits
        entry = found.setdefault(
            plan.plan_hash, {"plan": plan, "labels": set(), "budget": budget, "wiki": [], "lambada": []}
        )
        entry["labels"].add(cell.label)
        entry["wiki"].append(cell.metrics["ppl_wiki/ppl"])
        entry["lambada"].append(cell.metrics["ppl_lambada/ppl"])
    return found


def profiles(root: Path) -> list[SensitivityTable]:
    return [
        SensitivityTable.from_dict(json.loads(p.read_text())) for p in sorted(root.glob("*/sensitivity.json"))
    ]


def summed_kl(plan: Plan, tables: list[SensitivityTable]) -> float | None:
    """The knapsack objective of ``plan`` in the first table made with its quantiser, or None."""
    for table in tables:
        same = (table.granularity, table.group_size, table.quant_method, table.double_quant) == (
            plan.granularity,
            plan.group_size,
            plan.quant_method,
            plan.double_quant,
        )
        bits = [plan.layers[unit].bits for unit in table.unit_names] if same else []
        if same and all(b == 16 or b in table.bits for b in bits):
            return sum(
                0.0 if b == 16 else row[table.bits.index(b)] for b, row in zip(bits, table.kl, strict=True)
            )
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiment", type=Path, required=True, help="an experiment's folder (cells by label)"
    )
    parser.add_argument("--profiles", type=Path, required=True, help="the experiment's profiles folder")
    parser.add_argument("--windows", type=int, default=16, help="selection windows of 512 tokens")
    parser.add_argument("--out", type=Path, help="JSON of the rung-0 losses, read again when present")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for what, path in (("--experiment", args.experiment), ("--profiles", args.profiles)):
        if not path.is_dir():
            raise SystemExit(f"{what} must be a folder, got {str(path)!r}")
    if args.windows < 4 or args.windows % 4:
        raise SystemExit(f"--windows must be a positive multiple of 4, got {args.windows}")
    plans = done_plans(args.experiment)
    if len(plans) < 2:
        raise SystemExit(
            f"{args.experiment} has {len(plans)} done plan(s) of our quantiser; Kendall tau needs two"
        )
    tables = profiles(args.profiles)
    kept = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    todo = [h for h in plans if str(args.windows) + ":" + h not in kept]
    start = time.perf_counter()
    if todo:
        import torch
        from selection_loss import selection_evaluator

        from qradaptor.models.loading import load_model
        from qradaptor.quant.cache import QuantCache

        torch.set_num_threads(args.threads)
        evaluator = selection_evaluator(
            load_model(None, device="cpu", dtype=torch.float32), args.windows, QuantCache()
        )
        for h in todo:
            kept[f"{args.windows}:{h}"] = evaluator(plans[h]["plan"]).loss
            if args.out:  # after every plan, so a stopped run keeps what it scored
                tmp = args.out.with_name(args.out.name + ".tmp")
                tmp.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
                os.replace(tmp, args.out)
    rows = sorted(plans.items(), key=lambda kv: (kv[1]["budget"], statistics.fmean(kv[1]["wiki"])))
    elapsed = time.perf_counter() - start
    print(f"\n{platform.machine()}, {args.windows} x 512 tokens of embedded:wiki-selection; ", end="")
    print(f"{len(todo)} plans scored in {elapsed:.0f} s\n")
    print("| budget | plan | cells | labels | summed KL | rung 0 | PPL wiki | PPL LAMBADA |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    table = []
    for h, p in rows:
        kl, rung0 = summed_kl(p["plan"], tables), kept[f"{args.windows}:{h}"]
        wiki, lambada = statistics.fmean(p["wiki"]), statistics.fmean(p["lambada"])
        table.append((p["budget"], kl, rung0, wiki))
        kl_text = "" if kl is None else f"{kl:.4f}"
        labels = ", ".join(sorted(p["labels"]))
        cells = f"| {p['budget']} | {h} | {len(p['wiki'])} | {labels} "
        print(f"{cells}| {kl_text} | {rung0:.4f} | {wiki:.2f} | {lambada:.2f} |")
    print("\n| fidelity (Kendall tau-b against the final PPL wiki) | plans | all pairs | within budgets |")
    print("|---|---:|---:|---:|")
    for name, column in (("knapsack objective", 1), ("rung 0 (forward-only selection loss)", 2)):
        have = [r for r in table if r[column] is not None]
        x, y, groups = [r[column] for r in have], [r[3] for r in have], [r[0] for r in have]
        print(f"| {name} | {len(have)} | {kendall_tau(x, y):+.3f} | {kendall_tau(x, y, groups):+.3f} |")


if __name__ == "__main__":
    main()
