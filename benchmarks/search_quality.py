"""QR-Adaptor search on the embedded SmolLM2-135M-Instruct: what it costs and what it finds.

For each search seed, runs the full search (profile -> NSGA-II -> GP refinement) at one
budget, plus the ablations, each into its own Optuna study so its cost is its own. Then
scores, with the same proxy fine-tune, the chosen plans, uniform plans and random plans
of the same budget on two held-out sets: the search's own (the proxy score it optimised)
and a disjoint test set (perplexity after the proxy fine-tune, not seen by the search).

Cost is given as proxy tokens / tokens of one epoch over the training corpus, and as
search wall time / the time one epoch of LoRA fine-tuning takes at the measured step time.

Prints tables; writes everything to OUT/search_quality.json.

    python benchmarks/search_quality.py --device cuda --out /tmp/sq
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from qradaptor.correlation import pearson
from qradaptor.data import load_texts, pack_texts
from qradaptor.distributed.study import sqlite_url
from qradaptor.models.loading import load_model
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.search.bayes import BayesConfig
from qradaptor.search.budget import parse_budget
from qradaptor.search.initial import initial_population
from qradaptor.search.pipeline import SearchConfig, run_search
from qradaptor.search.proxy import ProxyConfig, ProxyEvaluator
from qradaptor.search.space import MemoryTable, SearchSpace
from qradaptor.sensitivity import profile_sensitivity

VARIANTS = ("full", "no_profile", "bits_only", "no_bayes")


def variant_config(base: SearchConfig, variant: str) -> SearchConfig:
    if variant == "full":
        return base
    if variant == "no_profile":
        return replace(base, profile=False)
    if variant == "bits_only":
        return replace(base, fixed_rank=16)
    if variant == "no_bayes":  # same number of evaluations, all spent on NSGA-II generations
        extra = base.bayes.iterations // base.offspring
        return replace(base, generations=base.generations + extra, bayes=BayesConfig(iterations=0))
    raise ValueError(variant)


def step_seconds(model, train_ids, eval_ids, proxy: ProxyConfig, plan: Plan, device: str) -> float:
    """Seconds per LoRA training step of ``plan``: (t(steps) - t(0)) / steps, build and scoring cancel."""
    long = ProxyEvaluator(model, train_ids, eval_ids, proxy, device=device)
    short = ProxyEvaluator(model, train_ids, eval_ids, replace(proxy, steps=0), device=device)
    short(plan)  # warm-up (kernels, allocator)
    t0 = short(replace_name(plan, "warm")).seconds
    t1 = long(plan).seconds
    return (t1 - t0) / proxy.steps


def replace_name(plan: Plan, name: str) -> Plan:
    return Plan.from_dict({**plan.to_dict(), "name": name})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", default="4.0bits")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--random", type=int, default=8, help="random plans of the budget")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--population", type=int, default=5)
    parser.add_argument("--offspring", type=int, default=1)
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--bayes-iterations", type=int, default=5)
    parser.add_argument("--calibration-samples", type=int, default=8)
    parser.add_argument("--baselines", type=int, default=1, help="1: also score uniform and random plans")
    parser.add_argument("--out", default="search_quality_out")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "studies").mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 matmuls: every plan alike, 2x faster

    start = time.perf_counter()
    loaded = load_model(None, device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    corpus = pack_texts(load_texts(None), tok, args.seq_len, seed=0)  # (N, T): one epoch
    n_train, n_eval = args.steps * args.batch_size, args.eval_batches * args.batch_size
    train_ids = corpus[:n_train]
    calibration = corpus[-args.calibration_samples :]
    # Plans are selected on one role of the corpora and reported on another (data/roles.py).
    eval_ids = pack_texts(load_texts("embedded:wiki-selection"), tok, args.seq_len, num_sequences=n_eval)
    test_ids = pack_texts(load_texts("embedded:boolq-heldout"), tok, args.seq_len, num_sequences=n_eval)
    proxy = ProxyConfig(steps=args.steps, batch_size=args.batch_size, eval_batches=args.eval_batches)
    print(
        f"loaded in {time.perf_counter() - start:.1f} s; corpus {corpus.shape[0]} x {corpus.shape[1]} tokens"
    )

    base = SearchConfig(
        budget=parse_budget(args.budget),
        references=False,  # uniform plans are scored once, below, not inside every search
        population=args.population,
        offspring=args.offspring,
        generations=args.generations,
        bayes=BayesConfig(iterations=args.bayes_iterations),
    )
    t0 = time.perf_counter()
    sensitivity = profile_sensitivity(model, calibration, bits=base.bits, progress=False)
    profile_seconds = time.perf_counter() - t0
    block_sens = sensitivity.min_bits_profile()
    print(f"profile: {profile_seconds:.1f} s")

    structure = inspect_model(model)
    plan_kwargs = {
        "group_size": 64,
        "quant_method": "hqq",
        "alpha": 16.0,
        "model_signature": structure.signature,
    }
    secs_per_step = step_seconds(
        model, train_ids, eval_ids, proxy, Plan.uniform(30, 4, 16, **plan_kwargs), args.device
    )
    epoch_seconds = secs_per_step * corpus.numel() / (args.batch_size * args.seq_len)

    space = SearchSpace.for_structure(structure, "block", bits=base.bits, ranks=base.ranks)
    table = MemoryTable.build(structure, space, **plan_kwargs)
    search_eval = ProxyEvaluator(model, train_ids, eval_ids, proxy, device=args.device)
    test_eval = ProxyEvaluator(model, train_ids, test_ids, proxy, device=args.device)
    result = {
        "machine": platform.node(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/search_quality.py " + " ".join(sys.argv[1:]),
        "args": vars(args),
        "proxy": asdict(proxy),
        "corpus_tokens": corpus.numel(),
        "seconds_per_step": secs_per_step,
        "epoch_seconds": epoch_seconds,
        "profile_seconds": profile_seconds,
        "sensitivity": sensitivity.to_dict(),
        "runs": [],
        "scored": {},
    }

    def save() -> None:
        result["total_seconds"] = time.perf_counter() - start
        (out / "search_quality.json").write_text(json.dumps(result, indent=2, default=str))

    def score(name: str, plan: Plan, proxy_loss: float | None = None) -> None:
        """Proxy loss on the search's held-out set and loss on the disjoint test set, same fine-tune."""
        genome = space.from_plan(plan)
        test_loss = test_eval(plan).loss
        result["scored"][name] = {
            "avg_bits": float(table.avg_bits_of(genome)),
            "bytes": int(table.bytes_of(genome)),
            "proxy_loss": search_eval(plan).loss if proxy_loss is None else proxy_loss,
            "test_loss": test_loss,
            "test_ppl": math.exp(test_loss),
        }
        print(f"scored {name}: {result['scored'][name]}", flush=True)
        save()

    if args.baselines:  # uniform plans and random plans of the same budget, filled to it
        for b in base.bits:
            score(f"uniform-{b}bit-r16", Plan.uniform(30, b, 16, **plan_kwargs))
        rng = np.random.default_rng(1234)
        for i, g in enumerate(initial_population(rng, args.random, table, base.budget, None)):
            score(f"random-{i}", space.to_plan(g, **plan_kwargs))

    for variant in [v for v in args.variants.split(",") if v]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            config = replace(variant_config(base, variant), seed=seed)
            db = out / "studies" / f"{variant}-seed{seed}.db"
            db.unlink(missing_ok=True)
            t0 = time.perf_counter()
            outcome = run_search(
                model,
                train_ids,
                eval_ids,
                config,
                storage=sqlite_url(db),
                proxy=proxy,
                sensitivity=sensitivity if config.profile else None,
                device=args.device,
                progress=False,
            )
            wall = time.perf_counter() - t0 + (profile_seconds if config.profile else 0.0)
            searched = [r for r in outcome.records if r.phase != "reference"]
            tokens = sum(r.tokens for r in searched)
            run = {
                "variant": variant,
                "seed": seed,
                "chosen": outcome.chosen.to_dict(),
                "plan": outcome.plan.to_dict(),
                "trials": [r.to_dict() for r in outcome.records],
                "evaluations": len(searched),
                "stage_seconds": {**outcome.stage_seconds, "sensitivity": profile_seconds * config.profile},
                "wall_seconds": wall,
                "proxy_tokens": tokens,
                "cost_epochs_tokens": tokens / corpus.numel(),
                "cost_epochs_time": wall / epoch_seconds,
                "pearson_bits_sensitivity": pearson(list(outcome.chosen.bits), list(block_sens)),
                "best_after_nsga2": min(r.loss for r in searched if r.phase in ("initial", "nsga2")),
            }
            result["runs"].append(run)
            print(
                f"{variant:>10} seed {seed}: loss {outcome.chosen.loss:.4f} ({outcome.chosen.phase}) "
                f"avg bits {outcome.chosen.avg_bits:.3f}, {run['evaluations']} evals, {wall:.0f} s, "
                f"{run['cost_epochs_tokens']:.3f} epochs (tokens), {run['cost_epochs_time']:.2f} (time), "
                f"r={run['pearson_bits_sensitivity']:.2f}",
                flush=True,
            )
            # The chosen plan's proxy loss is the study's: same fine-tune, same held-out set.
            score(f"{variant}-seed{seed}", outcome.plan, proxy_loss=outcome.chosen.loss)

    print("\n| plan | avg bits | proxy loss | test loss | test ppl |\n|---|---|---|---|---|")
    for name, row in result["scored"].items():
        cells = f"{row['avg_bits']:.3f} | {row['proxy_loss']:.4f} | {row['test_loss']:.4f}"
        cells += f" | {row['test_ppl']:.2f}"
        print(f"| {name} | {cells} |")
    save()
    print(f"total {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
