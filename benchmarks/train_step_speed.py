"""LoRA training step on SmolLM2-135M: packed plans vs a 16-bit base, and memory predicted vs measured.

For each plan: build the model (bf16 on CUDA, fp32 on CPU), train its LoRA adapters with
AdamW on packed BoolQ Wikipedia passages for a few steps, and report tokens/s (ratio to the
16-bit base, measured in the same run), the measured peak of allocated CUDA memory, and the
memory model's training-peak prediction (``training_memory``).

    python benchmarks/train_step_speed.py                         # CUDA, batch 8 x 512
    python benchmarks/train_step_speed.py --device cpu --batch-size 1 --seq-len 64 --steps 2
    python benchmarks/train_step_speed.py --checkpointing   # every plan gradient-checkpointed

``--plans lora16,4-bit`` keeps the rows whose label starts so (e.g. an 8B model, two rows);
``--profile N`` then runs N more steps of each under ``torch.profiler`` and prints where the time
goes (the ops and kernels with the most self time, and the dequantisation kernel's share).

    python benchmarks/train_step_speed.py --model /root/scale/models/8b --batch-size 4 \
        --checkpointing --plans lora16,4-bit --profile 3

With ``--checkpointing`` one more row runs the 4-bit plan with its packed layers dequantising
in the backward as well as in the checkpoint's recomputation (three dequantisations a step, as
before ``build.enable_gradient_checkpointing`` kept the recomputed weight): the saving, side by
side.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from qradaptor.build import apply_plan, enable_gradient_checkpointing
from qradaptor.data import load_texts, pack_texts
from qradaptor.memory import plan_memory, training_memory
from qradaptor.models import load_model
from qradaptor.models.loading import load_tokenizer
from qradaptor.models.structure import inspect_model
from qradaptor.plan import Plan
from qradaptor.quant.modules import COMPILE_ENV, QuantLinear, keep_weights_for_recompute
from qradaptor.recipes.inputs import load_structure

MIB = 2**20
DEQUANT_RANGE = "qradaptor.dequantize"


def run_plan(
    args: argparse.Namespace, plan: Plan, batches: torch.Tensor, simulated: bool, compiled: bool, keep: bool
):
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    os.environ[COMPILE_ENV] = "1" if compiled else "0"  # "1": the Triton kernel
    model = load_model(args.model, dtype=dtype, device=device).model
    structure = inspect_model(model)
    model = apply_plan(model, plan, simulated=simulated)
    model.train()
    if args.checkpointing:
        enable_gradient_checkpointing(model)
        keep_weights_for_recompute(model, on=keep)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    losses, t0 = [], 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        batch = batches[step % len(batches)].to(device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if args.profile:
        profile_steps(model, opt, batches, args.profile, device)
    tokens = args.steps * args.batch_size * args.seq_len
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    weight_bytes = 2 if dtype == torch.bfloat16 else 4
    report = plan_memory(structure, plan, weight_bytes=weight_bytes)
    if simulated:  # dense copies of the dequantised weights: stored like a 16-bit base
        report = plan_memory(
            structure, Plan.uniform(plan.num_blocks, 16, plan.block_ranks()[0]), weight_bytes=weight_bytes
        )
    predicted = training_memory(
        structure,
        report,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        act_bytes=weight_bytes,
        gradient_checkpointing=args.checkpointing,
    )
    del model, opt
    return tokens / seconds, peak, predicted, report, losses[-1]


def profile_steps(model, opt, batches: torch.Tensor, steps: int, device: torch.device) -> None:
    """``steps`` more training steps under torch.profiler: the ops with the most self time, and
    the share of the dequantisation (our Triton kernel, or the eager unpacking's ops)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    dequantize = QuantLinear.dequantized_weight

    def labelled(layer, dtype=None):  # one profiler range per dequantisation, eager or fused
        with torch.profiler.record_function(DEQUANT_RANGE):
            return dequantize(layer, dtype)

    QuantLinear.dequantized_weight = labelled
    try:
        with profile(activities=activities) as prof:
            for step in range(steps):
                batch = batches[step % len(batches)].to(device)
                model(input_ids=batch, labels=batch).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
    finally:
        QuantLinear.dequantized_weight = dequantize
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    total = sum(getattr(e, key) for e in averages)
    print(averages.table(sort_by=key, row_limit=12))
    if cuda:  # the kernel's own device time (the range's would be its launch on the host)
        dequant = sum(e.self_device_time_total for e in averages if "dequant_kernel" in e.key)
    else:
        dequant = sum(e.cpu_time_total for e in averages if e.key == DEQUANT_RANGE)
    calls = sum(e.count for e in averages if e.key == DEQUANT_RANGE) // steps
    print(
        f"profiled {steps} steps: {total / 1e3 / steps:,.1f} ms of self time a step; "
        f"dequantisation {dequant / 1e3 / steps:,.1f} ms of it ({dequant / max(total, 1):.1%}), "
        f"{calls} calls a step"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: embedded SmolLM2-135M)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on every plan")
    parser.add_argument("--plans", default=None, help="comma-separated label prefixes of the rows to run")
    parser.add_argument("--profile", type=int, default=0, help="steps of each row to profile (0: none)")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    blocks = load_structure(args.model)[1].num_blocks
    n = args.batch_size * 4
    seqs = pack_texts(load_texts(None), tokenizer, args.seq_len, num_sequences=n, seed=0)
    batches = seqs.view(4, args.batch_size, args.seq_len)
    r = args.rank
    runs = [
        ("lora16 (16-bit base)", Plan.uniform(blocks, 16, r), False, False, True),
        ("8-bit packed", Plan.uniform(blocks, 8, r), False, True, True),
        ("4-bit packed", Plan.uniform(blocks, 4, r), False, True, True),
        ("4-bit packed, eager dequant", Plan.uniform(blocks, 4, r), False, False, True),
        ("3-bit packed", Plan.uniform(blocks, 3, r), False, True, True),
        ("2-bit packed", Plan.uniform(blocks, 2, r), False, True, True),
        ("4-bit simulated (dense)", Plan.uniform(blocks, 4, r), True, False, True),
    ]
    if args.checkpointing:
        twice = "4-bit packed, dequantised in the backward too"
        runs.insert(3, (twice, Plan.uniform(blocks, 4, r), False, True, False))
    if args.device == "cpu":
        runs = [
            run for run in runs if run[0].startswith(("lora16", "4-bit packed")) and "eager" not in run[0]
        ]
    if args.plans:
        wanted = tuple(p.strip() for p in args.plans.split(","))
        runs = [run for run in runs if run[0].startswith(wanted)]
        if not runs or not runs[0][0].startswith("lora16"):
            parser.error(
                f"--plans must keep the lora16 row (the ratios' base) and match a row, got {args.plans!r}"
            )
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"device: {name}; torch {torch.__version__}; batch {args.batch_size} x {args.seq_len}; "
        f"rank {r}; {args.steps} timed steps after {args.warmup} warm-up"
        + ("; gradient checkpointing" if args.checkpointing else "")
    )
    print(
        "| plan | avg bits | tokens/s | vs lora16 | last loss | peak MiB measured | predicted | "
        "pred / meas | weights MiB (pred) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for label, plan, simulated, compiled, keep in runs:
        tps, peak, pred, report, loss = run_plan(args, plan, batches, simulated, compiled, keep)
        base = base or tps
        ratio = pred.total / peak if peak else float("nan")
        print(
            f"| {label} | {report.avg_bits:.2f} | {tps:,.0f} | {tps / base:.2f} | {loss:.3f} | "
            f"{peak / MIB:,.0f} | {pred.total / MIB:,.0f} | {ratio:.2f} | {pred.weights / MIB:,.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
