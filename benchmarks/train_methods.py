"""Side-by-side fine-tuning of the baselines in one process: tokens/s, peak memory, loss.

Every method trains one epoch (or --max-steps) of the same data through the same loop
(qradaptor.train), one after the other in this process, so the throughput ratios to
lora16 are measured under the same conditions (the paper's Table 4 reports QLoRA 0.85x,
AdaLoRA 0.65x, QR-Adaptor 0.82x of LoRA's speed). Peak memory is CUDA's
max_memory_allocated over the training steps, next to the memory model's prediction.

    python benchmarks/train_methods.py --methods lora16,qlora-4,qlora-nf4,adalora --out r.json
    python benchmarks/train_methods.py --methods qlora-4 \
        --searched docs/search/gpu_h100_full_seed0_baselines.json

Results are written to --out (JSON) after every method, so a cut-off run keeps what it did.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path


def searched_plan(path: str, structure_blocks: int):
    """The seed-0 plan chosen by a search_quality.py run (its 'runs'[0]['chosen'])."""
    from qradaptor.plan import Plan

    chosen = json.loads(Path(path).read_text())["runs"][0]["chosen"]
    assert len(chosen["bits"]) == structure_blocks
    return Plan.from_lists(chosen["bits"], chosen["ranks"], name="qr-adaptor")


def run_one(name: str, args: argparse.Namespace, plan) -> dict:
    import torch

    from qradaptor.train.config import TrainConfig
    from qradaptor.train.run import DataSpec, train_plan

    config = TrainConfig(
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seq_len=args.seq_len,
        seed=args.seed,
        lora_dropout=args.lora_dropout,
        progress=False,
    )
    data = DataSpec(limit=args.limit, eval_size=args.eval_size)
    method = "lora" if plan is not None else name
    started = time.perf_counter()
    outcome = train_plan(args.model, method, config, data, plan=plan, rank=16, bits=4, device=args.device)
    result, memory = outcome.result, outcome.memory
    row = {
        "name": name,
        "method": method,
        "plan_hash": outcome.plan.plan_hash,
        "avg_bits": memory.avg_bits,
        "avg_rank": memory.avg_rank,
        "trainable_params": memory.trainable_params,
        "steps": result.steps,
        "tokens": result.tokens,
        "train_seconds": result.train_seconds,
        "tokens_per_second": result.tokens_per_second,
        "steady_tokens_per_second": result.steady_tokens_per_second(),
        "measured_peak": memory.measured_peak,
        "predicted_peak": memory.predicted_peak,
        "predicted_parts": dict(memory.predicted_parts or {}),
        "weights_bytes": memory.weights_bytes,
        "first_loss": result.losses[0],
        "final_train_loss": sum(result.losses[-20:]) / len(result.losses[-20:]),
        "final_eval_loss": result.evals[-1][1] if result.evals else None,
        "wall_seconds": time.perf_counter() - started,
    }
    if args.probe:
        row["probe"] = probe_shape(outcome.model, args.batch_size, args.seq_len, outcome.tokenizer.vocab_size)
    if args.eval_tasks:
        from qradaptor.eval.suite import resolve_tasks, run_suite, zero_shot_average

        records = run_suite(
            outcome.model,
            outcome.tokenizer,
            resolve_tasks(args.eval_tasks.split(",")),
            model_name=outcome.source,
            plan_hash=outcome.plan.plan_hash,
            limit=args.eval_limit,
            batch_size=32,
        )
        row["eval"] = {f"{r.task}:{r.metric}": r.value for r in records}
        row["zero_shot_avg_acc"] = zero_shot_average(records, "acc")
    del outcome
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def _saved_bytes(model, ids) -> dict[str, int]:
    """Bytes autograd saves in one forward, by dtype (distinct storages, parameters excluded)."""
    import torch

    params = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, tuple[str, int]] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = (str(t.dtype).removeprefix("torch."), t.untyped_storage().nbytes())
        return None  # keep nothing: the graph is never run backward, and holding t leaked it

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    del loss
    out: dict[str, int] = {}
    for dtype, n in seen.values():
        out[dtype] = out.get(dtype, 0) + n
    return out


def probe_shape(model, batch: int, seq: int, vocab: int) -> dict:
    """Peak CUDA bytes of a training step at exactly (batch, seq), with and without adapter dropout.

    The epoch's peak depends on how wide its widest padded batch was; the prediction is for
    full-width batches, so this step at the predicted shape is the like-for-like comparison.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=generator).to("cuda")
    out = {}
    model.train()
    for label in ("as_trained", "no_dropout"):
        if label == "no_dropout":
            for module in model.modules():
                drops = getattr(module, "lora_dropout", None)
                if isinstance(drops, torch.nn.ModuleDict):
                    for key in list(drops):
                        drops[key] = torch.nn.Identity()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        model.zero_grad(set_to_none=True)
        del loss
        out[label] = {"peak": int(peak), "resident": int(before), "saved": _saved_bytes(model, ids)}
        torch.cuda.empty_cache()
    model.eval()
    return out


def table(rows: list[dict]) -> str:
    ref = next((r for r in rows if r["name"] == "lora16"), None)
    lines = [
        "| method | avg bits | avg rank | trainable | tokens/s | x lora16 | peak MiB (measured) "
        "| predicted | gap | eval loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["steady_tokens_per_second"] / ref["steady_tokens_per_second"] if ref else float("nan")
        measured = r["measured_peak"]
        gap = (r["predicted_peak"] - measured) / measured if measured else float("nan")
        lines.append(
            f"| {r['name']} | {r['avg_bits']:.2f} | {r['avg_rank']:.1f} | {r['trainable_params']:,} | "
            f"{r['steady_tokens_per_second']:,.0f} | {ratio:.2f} | "
            f"{(measured or 0) / 2**20:,.0f} | {r['predicted_peak'] / 2**20:,.0f} | {gap:+.1%} | "
            f"{r['final_eval_loss'] or float('nan'):.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: embedded SmolLM2)")
    parser.add_argument("--methods", default="lora16,qlora-4,qlora-nf4,adalora")
    parser.add_argument(
        "--searched", help="search_quality.py JSON whose seed-0 plan is trained as qr-adaptor"
    )
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--limit", type=int, help="examples of the QA mix (default: all 6,000)")
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--eval-tasks", help="after each run, e.g. ppl_wiki,arc_easy")
    parser.add_argument("--eval-limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--probe", action="store_true", help="also a step at exactly batch x seq-len")
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch

    from qradaptor.models.provenance import read_provenance

    names = [m for m in args.methods.split(",") if m]
    jobs: list[tuple[str, object]] = [(n, None) for n in names]
    if args.searched:
        from qradaptor.models.loading import load_config
        from qradaptor.models.structure import structure_from_config

        blocks = structure_from_config(load_config(args.model)).num_blocks
        jobs.append(("qr-adaptor", searched_plan(args.searched, blocks)))
    meta = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "args": vars(args),
        "provenance": read_provenance(args.model).text,
    }
    rows: list[dict] = []
    for name, plan in jobs:
        print(f"== {name}", file=sys.stderr, flush=True)
        rows.append(run_one(name, args, plan))
        Path(args.out).write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
        print(table(rows[-1:]), file=sys.stderr, flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
