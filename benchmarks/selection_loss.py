"""The selection loss of plans: forward only, as the search's screen scores a plan, on the embedded SmolLM2.

Each plan (a plan JSON: a search's plan.json, a cell's plan.json, ``qra plan -o``) quantises the
embedded SmolLM2-135M-Instruct (its "16-bit" is the Q4_1 GGUF dequantised), adapters untrained,
and is scored by its held-out loss on the search's selection text (``embedded:wiki-selection``)
as ``ProxyEvaluator`` with 0 steps scores it: ``--windows`` of 512 tokens (the full preset's 16;
the text has 64). Plans share one fitted-weights cache. Prints a table.

    python benchmarks/selection_loss.py --windows 64 a=run/plan.json b=cell/plan.json
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from qradaptor.cli.common import read_plan
from qradaptor.data import pack_texts
from qradaptor.data.search_texts import search_texts
from qradaptor.models.loading import LoadedModel, load_model
from qradaptor.plan import Plan
from qradaptor.quant.cache import QuantCache
from qradaptor.search.proxy import ProxyConfig, ProxyEvaluator

BATCH = 4
"""Windows a forward pass (the search's proxy batch)."""


def selection_windows(loaded: LoadedModel, selection: list[str], windows: int) -> torch.Tensor:
    """The first ``windows`` windows of 512 tokens of the selection text, (windows, 512), as the
    search packs them; more than the text holds ends the run with one line (pack_texts refuses
    to pack fewer than asked)."""
    try:
        return pack_texts(selection, loaded.tokenizer, 512, num_sequences=windows)
    except ValueError as err:
        raise SystemExit(f"--windows {windows}: {err}") from None


def selection_evaluator(
    loaded: LoadedModel, windows: int, cache: QuantCache, steps: int = 0, seed: int = 0
) -> ProxyEvaluator:
    """The search's scorer on ``windows`` windows of 512 tokens of the
    selection text, fits kept in ``cache``: rung 0 (``ProxyEvaluator`` with 0 steps) by default;
    with ``steps``, its proxy fine-tune on as many batches of the calibration text (the search's
    warm-up and learning rate, adapters initialised by ``seed``)."""
    texts = search_texts("embedded:wiki-calibration", "embedded:wiki-selection")
    # 0 steps trains nothing; one batch still goes in, as the search does.
    train_ids = pack_texts(texts.calibration, loaded.tokenizer, 512, seed=0)[: max(steps, 1) * BATCH]
    eval_ids = selection_windows(loaded, texts.selection, windows)
    warmup = ProxyConfig.warmup if steps else 0  # the search's default warm-up when it trains
    eval_batches = -(-windows // BATCH)  # every window scored: a last batch may be short
    proxy = ProxyConfig(steps, BATCH, eval_batches=eval_batches, warmup=warmup, seed=seed)
    return ProxyEvaluator(loaded.model, train_ids, eval_ids, proxy, cache=cache)


def named_plans(items: list[str]) -> list[tuple[str, Plan]]:
    """``NAME=PLAN.json`` arguments as (name, plan); a malformed one or an unreadable plan ends
    the run with one line, before the model loads."""
    named = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"plans are NAME=PLAN.json, got {item!r}")
        try:
            named.append((name, read_plan(path)))
        except ValueError as err:
            raise SystemExit(str(err)) from None
    return named


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plans", nargs="+", metavar="NAME=PLAN.json")
    parser.add_argument("--windows", type=int, default=16, help="selection windows of 512 tokens (4k)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.windows < BATCH or args.windows % BATCH:
        raise SystemExit(f"--windows must be a positive multiple of {BATCH}, got {args.windows}")
    named = named_plans(args.plans)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    loaded = load_model(None, device="cpu", dtype=torch.float32)
    evaluator = selection_evaluator(loaded, args.windows, QuantCache())
    rows = [(name, plan, evaluator(plan).loss) for name, plan in named]
    print(
        f"\n{platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
        f"{args.windows} x 512 tokens of embedded:wiki-selection; {time.perf_counter() - start:.0f} s\n"
    )
    print("| plan | plan name | selection loss |")
    print("|---|---|---:|")
    for name, plan, loss in rows:
        print(f"| {name} | {plan.name} | {loss:.5f} |")


if __name__ == "__main__":
    main()
