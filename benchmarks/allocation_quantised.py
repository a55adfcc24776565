"""Plans at equal memory before any fine-tune: held-out perplexity of the quantised model.

Each plan (a plan JSON, e.g. a search's plan.json or ``qra plan --baseline knapsack -o``, or
uniform:BITS:RANK) quantises the embedded SmolLM2-135M-Instruct (its "16-bit" is the Q4_1
GGUF dequantised), adapters untrained (LoRA B = 0, so they change nothing), and is scored by
``qra eval``'s perplexity on ppl_wiki (held-out BoolQ passages) and ppl_lambada. Every plan
shares one fitted-weights cache, so each (linear, bits) is fitted once. Prints a table.

    python benchmarks/allocation_quantised.py knapsack=k.json searched=run/plan.json uniform-3=uniform:3:16
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch

from qradaptor.build import apply_plan
from qradaptor.cli.common import read_plan
from qradaptor.eval.suite import run_suite
from qradaptor.memory import plan_memory
from qradaptor.models.loading import load_model
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.quant.cache import QuantCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "plans", nargs="+", metavar="LABEL=PLAN", help="a plan JSON file or uniform:BITS:RANK"
    )
    parser.add_argument("--limit", type=int, default=32, help="perplexity windows per corpus")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None, dtype=torch.float32, device="cpu")
    structure = inspect_model(loaded.model)
    cache = QuantCache()
    print(f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads; ", end="")
    print(f"{args.limit} x {args.seq_len} tokens per corpus")
    header = f"{'plan':<22} {'avg bits':>8} {'MiB':>8} {'ppl_wiki':>9} {'ppl_lambada':>11}"
    print(f"{header} {'bits by block':<40} {'s':>6}")
    for item in args.plans:
        label, _, spec = item.partition("=")
        made = read_plan(spec)
        if isinstance(made, tuple):  # uniform:BITS:RANK
            made = Plan.uniform(structure.num_blocks, made[0], made[1])
        start = time.perf_counter()
        model = apply_plan(copy.deepcopy(loaded.model), made, simulated=True, cache=cache).eval()
        records = run_suite(
            model,
            loaded.tokenizer,
            ["ppl_wiki", "ppl_lambada"],
            model_name="embedded",
            plan_hash=made.plan_hash,
            limit=args.limit,
            seq_len=args.seq_len,
            progress=False,
        )
        ppl = {r.task: r.value for r in records}
        report = plan_memory(structure, made)
        bits = "".join(str(b) if b < 10 else "F" for b in made.block_bits())
        print(
            f"{label:<22} {report.avg_bits:>8.3f} {report.total_bytes / 2**20:>8.1f} {ppl['ppl_wiki']:>9.2f} "
            f"{ppl['ppl_lambada']:>11.2f} {bits:<40} {time.perf_counter() - start:>6.0f}"
        )


if __name__ == "__main__":
    main()
