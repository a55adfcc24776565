"""How well each fidelity predicts the fine-tuned result: Kendall tau over plans across budgets.

The halving search ranks plans by cheap fidelities before it fine-tunes any: the knapsack
objective (the summed per-block KL of the sensitivity table at the plan's bits), the rung-0
score (forward-only held-out loss of the quantised plan) and the proxy score (held-out loss
after a few LoRA steps). This script measures, on plans spread across memory budgets, how well
each one orders the plans like the result they stand for: the test perplexity after a longer
LoRA fine-tune.

Model: the embedded SmolLM2-135M-Instruct in fp32, whose "16-bit" base is its Q4_1 GGUF
weights dequantised. Data roles (docs/DATA.md): the profile and every fine-tune (proxy and
final) train on ``embedded:wiki-calibration``; rung-0 and proxy scores are held-out losses on
``embedded:wiki-selection``; the final perplexity is on ``embedded:boolq-heldout`` (``qra
eval``'s ppl_wiki text), which nothing here selects on.

Plans, per budget: the knapsack plan (``knapsack_genome`` over the KL table), then in turn a
neighbour of it (the search's crossover and proximity mutation, repaired and filled to the
budget: what the halving search proposes) and a random plan (random bits, repaired and filled
to the budget at random: a plan no sensitivity-guided proposer would pick), or the kinds --mix
names. Every plan has one rank everywhere; all plans share one fitted-weights cache, so each
(linear, bits) is fitted once.

Fidelities per plan, each from ``ProxyEvaluator``:
    knapsack objective   sum_l S_l(b_l) from the profile (nats per token)
    rung 0               loss_before of the proxy evaluator: the held-out loss of the quantised
                         plan before any step, which is exactly ProxyConfig(steps=0)'s score
    proxy                held-out loss after --steps steps of --batch-size windows
    final                exp(test loss) after --final-steps steps of --final-batch-size windows
                         (AdamW, lr 2e-4, cosine, 10% warm-up), on the test windows

Kendall tau-b (scipy.stats.kendalltau) of each fidelity against the final perplexity, over all
plans (where budget alone orders much of it) and over the pairs within one budget only (pooled:
what a search at one budget needs).

    python benchmarks/fidelity_tau.py --device cuda --out fidelity_gpu.json    # GPU, full scale
    python benchmarks/fidelity_tau.py --cpu-small --out fidelity_cpu.json      # 2-core CPU, ~40 min
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

from qradaptor.correlation import kendall_tau

FULL = {
    "seq_len": 512,
    "windows": 32,
    "test_windows": 64,
    "steps": 20,
    "batch_size": 4,
    "final_steps": 60,
    "final_batch_size": 8,
    "calibration_samples": 8,
    "budgets": "3.5bits,3.75bits,4.0bits,4.25bits,4.5bits,5.0bits",
    "plans_per_budget": 4,
}
"""GPU defaults: the full search preset's proxy (20 steps of 4 x 512) and profile (8 x 512)."""
CPU_SMALL = {
    "seq_len": 128,
    "windows": 8,
    "test_windows": 8,
    "steps": 6,
    "batch_size": 2,
    "final_steps": 24,
    "final_batch_size": 2,
    "calibration_samples": 2,
    "budgets": "3.5bits,4.0bits,4.5bits,5.0bits",
    "plans_per_budget": 3,
}
"""--cpu-small: 12 plans in about 40 minutes on a shared 2-core CPU (one torch thread: two threads
on two contended cores run several-fold slower, docs/SENSITIVITY.md): the quick preset's proxy
(6 steps of 2 windows) at 128 tokens, a final fine-tune of 4x the proxy's tokens, 8 windows."""
KINDS = ("knapsack", "neighbour", "random")
FIDELITIES = {
    "knapsack_kl": "knapsack objective (summed KL)",
    "rung0_loss": "rung 0 (forward-only selection loss)",
    "proxy_loss": "proxy (selection loss after the proxy steps)",
    "test_ppl_quantised": "test ppl before fine-tuning (not a fidelity: for reference)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options, with the --cpu-small or GPU default of each one not given; all checked here."""
    from qradaptor.search.budget import parse_budget

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--cpu-small", action="store_true", help=f"the small defaults: {CPU_SMALL}")
    for name, value in FULL.items():
        kind = str if isinstance(value, str) else int
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, help=f"default {value} (--cpu-small: {CPU_SMALL[name]})")
    parser.add_argument("--bits", default="2,3,4,8", help="bit choices per block (default 2,3,4,8)")
    parser.add_argument(
        "--mix",
        default="neighbour,random",
        help="kinds of a budget's other plans, in turn (neighbour, random)",
    )
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of every block (default 16)")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4, help="peak lr of proxy and final fine-tunes")
    parser.add_argument("--sensitivity", metavar="FILE", help="a qra profile sensitivity.json (else profile)")
    parser.add_argument("--seed", type=int, default=0, help="seeds plan proposals, data order and adapters")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default torch's; --cpu-small: 1)")
    parser.add_argument("--out", metavar="JSON", help="write settings, per-plan numbers and taus here")
    parser.add_argument("--report", metavar="JSON", help="only print the table and taus of an --out file")
    args = parser.parse_args(argv)
    defaults = CPU_SMALL if args.cpu_small else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in (*FULL, "rank", "group_size", "threads"):
        value = getattr(args, name)
        if isinstance(value, int) and value < (0 if name == "rank" else 1):
            parser.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'rank' else 1}, got {value}")
    if args.device not in ("auto", "cpu", "cuda"):
        parser.error(f"--device must be auto, cpu or cuda, got {args.device!r}")
    try:
        args.budget_list = [parse_budget(text) for text in args.budgets.split(",")]
        args.bit_choices = tuple(sorted({int(b) for b in args.bits.split(",")}))
    except ValueError as err:
        parser.error(f"--budgets or --bits: {err}")
    if len(args.budget_list) * args.plans_per_budget < 4:
        parser.error(
            f"--budgets x --plans-per-budget must give at least 4 plans, got {args.budgets!r} x "
            f"{args.plans_per_budget}"
        )
    args.mix_list = args.mix.split(",")
    if not set(args.mix_list) <= {"neighbour", "random"}:
        parser.error(f"--mix must list neighbour and/or random, comma-separated, got {args.mix!r}")
    if not 0 < args.lr < math.inf:
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    return args


def propose(args: argparse.Namespace, structure: Any, values: np.ndarray) -> list[dict[str, Any]]:
    """Per budget: the knapsack plan, then neighbours and random plans in turn, all distinct.

    Returns:
        One dict per plan: label, budget text, kind, genome, Plan, avg bits, MiB, summed KL.
    """
    from qradaptor.search.budget import fill, repair
    from qradaptor.search.candidates import neighbours
    from qradaptor.search.knapsack import knapsack_genome
    from qradaptor.search.space import MemoryTable, SearchSpace

    space = SearchSpace.for_structure(structure, "block", bits=args.bit_choices, ranks=(args.rank,))
    plan_kwargs = {
        "group_size": args.group_size,
        "quant_method": "hqq",
        "alpha": float(args.rank),
        "model_signature": structure.signature,
    }
    table = MemoryTable.build(structure, space, **plan_kwargs)
    sensitivity = values[:, 0] - values[:, -1]  # what a block loses at its lowest bits
    rng = np.random.default_rng(args.seed)
    rows = np.arange(space.num_units)
    plans = []
    for text, budget in zip(args.budgets.split(","), args.budget_list, strict=True):
        knapsack = knapsack_genome(table, values, budget, rank=args.rank)
        genomes: list[tuple[str, np.ndarray]] = [("knapsack", knapsack)]
        for i in range(1, args.plans_per_budget):
            kind = args.mix_list[(i - 1) % len(args.mix_list)]
            seen = [g for _, g in genomes]
            for _ in range(50):  # a budget's space can run dry of new plans (e.g. near the lowest)
                if kind == "neighbour":
                    found = neighbours(rng, [knapsack], table, budget, sensitivity, 1, exclude=seen)
                    genome = found[0] if found else None
                else:
                    start = rng.integers(0, len(space.bit_choices), size=(space.num_units, 2))
                    start[:, 1] = 0
                    genome = fill(rng, repair(rng, start, budget, table), budget, table, noise=0.0)
                if genome is not None and not any(np.array_equal(genome, g) for g in seen):
                    genomes.append((kind, genome))
                    break
            else:
                print(f"  {text}: no new {kind} plan after 50 tries; this budget has fewer plans")
        for i, (kind, genome) in enumerate(genomes):
            label = f"{text}/{kind}" + ("" if i == 0 else f"-{i}")
            plans.append(
                {
                    "label": label,
                    "budget": text,
                    "kind": kind,
                    "plan": space.to_plan(genome, name=label.replace("/", "-"), **plan_kwargs),
                    "avg_bits": float(table.avg_bits_of(genome)),
                    "mib": float(table.bytes_of(genome)) / 2**20,
                    "knapsack_kl": float(values[rows, genome[:, 0]].sum()),
                }
            )
    return plans


def windows(source: str, tokenizer: Any, seq_len: int, count: int | None, seed: int) -> Any:
    """(count, seq_len) windows of an embedded corpus; all it fills when count is None."""
    from qradaptor.data import load_texts, pack_texts

    return pack_texts(load_texts(source), tokenizer, seq_len, num_sequences=count, seed=seed)


def taus(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Kendall tau-b of each fidelity against the final perplexity: overall, within budgets, per budget."""
    from scipy.stats import kendalltau

    final = [r["final_ppl"] for r in rows]
    budgets = [r["budget"] for r in rows]
    out = {}
    for key in FIDELITIES:
        x = [r[key] for r in rows]
        overall = kendalltau(x, final)
        per_budget = {}
        for b in dict.fromkeys(budgets):
            idx = [i for i, bb in enumerate(budgets) if bb == b]
            per_budget[b] = kendall_tau([x[i] for i in idx], [final[i] for i in idx])
        out[key] = {
            "overall": float(overall.statistic),
            "overall_p": float(overall.pvalue),
            "within_budget": kendall_tau(x, final, budgets),
            "within_budget_pairs": sum(n * (n - 1) // 2 for n in Counter(budgets).values()),
            "per_budget": per_budget,
        }
    return out


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Atomically (re)written after every plan, so a stopped run keeps what it measured."""
    from qradaptor.atomic import write_text

    write_text(path, json.dumps(payload, indent=1, allow_nan=True) + "\n")


def check_inputs(args: argparse.Namespace) -> tuple[Any, Any]:
    """(structure, sensitivity table or None); a bad --sensitivity or budget exits 2 before any load."""
    from qradaptor.cli.common import load_structure, read_sensitivity
    from qradaptor.search.budget import check_budget
    from qradaptor.search.knapsack import unit_values
    from qradaptor.search.space import MemoryTable, SearchSpace

    structure = load_structure(None)[1]  # the config only, no weights
    table = None
    try:
        space = SearchSpace.for_structure(structure, "block", bits=args.bit_choices, ranks=(args.rank,))
        memory = MemoryTable.build(structure, space, group_size=args.group_size)
        for budget in args.budget_list:
            check_budget(budget, memory)  # names the smallest plan when a budget is below it
        if args.sensitivity:
            table = read_sensitivity(args.sensitivity, structure.signature)
            if (table.group_size, table.quant_method) != (args.group_size, "hqq"):
                raise ValueError(
                    f"--sensitivity {args.sensitivity!r} was profiled at group size {table.group_size} "
                    f"with {table.quant_method}; this benchmark quantises at {args.group_size} with hqq"
                )
            unit_values(space, table)  # lacks a bit choice: refused here
    except ValueError as err:
        print(f"fidelity_tau.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return structure, table


def evaluator(
    model: Any, train_ids: Any, eval_ids: Any, steps: int, batch: int, args: Any, cache: Any
) -> Any:
    """A ProxyEvaluator scoring every held-out row of ``eval_ids`` after ``steps`` steps of ``batch`` rows."""
    from qradaptor.search.proxy import ProxyConfig, ProxyEvaluator

    config = ProxyConfig(
        steps=steps,
        batch_size=batch,
        lr=args.lr,
        warmup=min(2, steps) if steps < 20 else steps // 10,
        eval_batches=math.ceil(eval_ids.shape[0] / batch),
        seed=args.seed,
    )
    return ProxyEvaluator(model, train_ids, eval_ids, config, device=args.resolved_device, cache=cache)


def measure(plans: list[dict[str, Any]], proxy: Any, final: Any, out: str | None, meta: dict) -> list[dict]:
    """Scores every plan at every fidelity, printing a row (and rewriting --out) after each."""
    print(
        f"{'plan':<22} {'avg bits':>8} {'MiB':>6} {'sum KL':>7} {'rung0':>7} {'proxy':>7} "
        f"{'ppl q':>7} {'ppl FT':>7}  {'bits, block 0 to 29':<30} {'s':>4}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for item in plans:
        plan = item["plan"]
        scored = proxy(plan)  # its loss_before is the rung-0 score: the same forward, before any step
        tuned = final(plan)
        row = {
            **{k: v for k, v in item.items() if k != "plan"},
            "rung0_loss": scored.loss_before,
            "proxy_loss": scored.loss,
            "test_ppl_quantised": math.exp(tuned.loss_before),
            "final_loss": tuned.loss,
            "final_ppl": math.exp(tuned.loss),
            "final_train_loss_last": tuned.train_loss[-1] if tuned.train_loss else None,
            "seconds": scored.seconds + tuned.seconds,
            "bits_by_block": "".join(str(b) if b < 10 else "F" for b in plan.block_bits()),
            "plan_hash": plan.plan_hash,
            "plan": json.loads(plan.to_json()),
        }
        rows.append(row)
        print(
            f"{row['label']:<22} {row['avg_bits']:>8.3f} {row['mib']:>6.1f} {row['knapsack_kl']:>7.4f} "
            f"{row['rung0_loss']:>7.4f} {row['proxy_loss']:>7.4f} {row['test_ppl_quantised']:>7.2f} "
            f"{row['final_ppl']:>7.2f}  {row['bits_by_block']:<30} {row['seconds']:>4.0f}",
            flush=True,
        )
        if out:
            write_json(out, {**meta, "rows": rows, "done": False})
    return rows


def all_taus(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``taus`` over every plan, and over the knapsack plans and their neighbours only.

    Random plans are far worse than guided ones, so pairs with one are easy to order; the
    guided subset holds the close pairs a search has to tell apart.
    """
    guided = [r for r in rows if r["kind"] != "random"]
    return {"all plans": taus(rows), "knapsack and neighbours": taus(guided)}


def print_taus(result: dict[str, dict[str, dict[str, Any]]], rows: list[dict[str, Any]]) -> None:
    """The tables of taus: over all plans (with scipy's p), pooled within budgets, per budget."""
    for subset, table in result.items():
        count = len(rows) if subset == "all plans" else sum(r["kind"] != "random" for r in rows)
        pairs = table["knapsack_kl"]["within_budget_pairs"]
        print(
            f"\nKendall tau-b against the final perplexity, {subset} ({count}; {pairs} pairs within budgets)"
        )
        print(f"{'fidelity':<60} {'all':>6} {'p':>8} {'within':>7}  per budget")
        for key, label in FIDELITIES.items():
            t = table[key]
            per = " ".join(f"{b}:{v:+.2f}" for b, v in t["per_budget"].items())
            print(
                f"{label:<60} {t['overall']:>+6.3f} {t['overall_p']:>8.1e} {t['within_budget']:>+7.3f}  {per}"
            )


def report(path: str) -> int:
    """--report: the per-plan table and the taus of a finished (or stopped) run's --out file."""
    data = json.loads(open(path, encoding="utf-8").read())
    rows = data["rows"]
    print(f"{data['machine']}; settings {data['settings']}; {'finished' if data['done'] else 'stopped'}")
    print(
        "| plan | avg bits | summed KL | rung 0 | proxy | test ppl, quantised | test ppl, fine-tuned | bits |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['label']} | {r['avg_bits']:.3f} | {r['knapsack_kl']:.4f} | {r['rung0_loss']:.4f} | "
            f"{r['proxy_loss']:.4f} | {r['test_ppl_quantised']:.2f} | {r['final_ppl']:.2f} | "
            f"{r['bits_by_block']} |"
        )
    print_taus(all_taus(rows), rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    structure, table = check_inputs(args)
    import torch

    from qradaptor.cli.common import resolve_device
    from qradaptor.models.loading import load_model
    from qradaptor.quant.cache import QuantCache
    from qradaptor.search.knapsack import unit_values
    from qradaptor.search.space import SearchSpace
    from qradaptor.sensitivity import profile_sensitivity

    if args.threads or args.cpu_small:
        torch.set_num_threads(args.threads or 1)
    args.resolved_device = resolve_device(args.device)
    started = time.perf_counter()
    loaded = load_model(None, dtype=torch.float32, device=args.resolved_device)
    tok, seq = loaded.tokenizer, args.seq_len
    needed = max(args.steps * args.batch_size, args.final_steps * args.final_batch_size)
    train_ids = windows("embedded:wiki-calibration", tok, seq, None, args.seed)[:needed]  # cycled if short
    selection_ids = windows("embedded:wiki-selection", tok, seq, args.windows, args.seed)
    test_ids = windows("embedded:boolq-heldout", tok, seq, args.test_windows, args.seed)
    cache = QuantCache()  # shared by the profile and every plan of both evaluators
    profile_seconds = 0.0
    if table is None:
        start = time.perf_counter()
        table = profile_sensitivity(
            loaded.model,
            train_ids[: args.calibration_samples],
            bits=tuple(b for b in args.bit_choices if b != 16),
            group_size=args.group_size,
            quant_method="hqq",
            progress=False,
            cache=cache,
        )
        profile_seconds = time.perf_counter() - start
    space = SearchSpace.for_structure(structure, "block", bits=args.bit_choices, ranks=(args.rank,))
    plans = propose(args, structure, unit_values(space, table))
    proxy = evaluator(loaded.model, train_ids, selection_ids, args.steps, args.batch_size, args, cache)
    final = evaluator(loaded.model, train_ids, test_ids, args.final_steps, args.final_batch_size, args, cache)
    del loaded  # the evaluators hold their own copies
    settings = {
        k: getattr(args, k) for k in (*FULL, "mix", "bits", "rank", "group_size", "lr", "seed", "sensitivity")
    }
    device = torch.cuda.get_device_name() if args.resolved_device == "cuda" else "CPU"
    machine = (
        f"{platform.machine()} {device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(f"{machine}; embedded SmolLM2-135M-Instruct fp32 (its 16-bit base: the Q4_1 GGUF dequantised)")
    print(f"settings: {settings}")
    source = f"read {args.sensitivity}" if args.sensitivity else f"profiled in {profile_seconds:.0f} s"
    print(
        f"profile {source} ({table.tokens} tokens, bits {table.bits}); windows: "
        f"train {tuple(train_ids.shape)}, selection {tuple(selection_ids.shape)}, "
        f"test {tuple(test_ids.shape)}; {len(plans)} plans"
    )
    meta = {"machine": machine, "settings": settings, "profile_seconds": profile_seconds}
    rows = measure(plans, proxy, final, args.out, meta)
    result = all_taus(rows)
    print_taus(result, rows)
    seconds = time.perf_counter() - started
    print(f"total {seconds:.0f} s (model load and data included); {len(cache)} fits cached")
    if args.out:
        date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        write_json(
            args.out, {**meta, "date": date, "seconds": seconds, "rows": rows, "taus": result, "done": True}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
