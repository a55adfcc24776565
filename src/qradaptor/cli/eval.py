"""``qra eval``: perplexity and zero-shot accuracy of a (quantised, adapted) model."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import TYPE_CHECKING, Any

from qradaptor.cli.common import check_device, check_output, read_plan, resolve_device, write_text_atomic

if TYPE_CHECKING:
    from qradaptor.plan import Plan

UNFINISHED = (
    "warning: run {run!r} has no train.json, which qra train writes last: it was put together by hand "
    "or its training did not finish; reading it as it is"
)
"""Said of a run folder that is readable but not known to be whole."""


def eval(  # noqa: A001 - the verb's name is the command's
    model: str | None = None,
    *,
    plan: str | None = None,
    adapter: str | None = None,
    run: str | None = None,
    tasks: str = "suite",
    limit: int | None = None,
    batch_size: int = 16,
    seq_len: int = 512,
    stride: int | None = None,
    backend: str = "qradaptor",
    device: str = "auto",
    max_memory: str | None = None,
    seed: int = 1234,
    output: str | None = None,
    force: bool = False,
    resume: bool = False,
    as_json: bool = False,
    no_progress: bool = False,
    whole_inputs: bool = False,
) -> int:
    """Evaluate a model (quantised per plan, with or without a trained adapter) on the suite.

    Perplexity on the test role of BoolQ's Wikipedia passages (ppl_wiki; not WikiText-2) and LAMBADA
    passages (ppl_lambada), the seven zero-shot tasks scored as lm-evaluation-harness scores
    them (arc_easy, arc_challenge, piqa, hellaswag, winogrande, boolq, openbookqa), GSM8K
    8-shot (gsm8k) and MMLU 5-shot (mmlu), all from offline copies. Groups: suite (both
    perplexities and the seven tasks), zeroshot, ppl, all.

    Args:
        model: a local model directory, a .gguf file or a hub id; omitted: the embedded
            SmolLM2-135M-Instruct
        plan: a plan JSON file or uniform:BITS:RANK; omitted: the base model as loaded (or, with
            --adapter, the adapter's ranks on the unquantised base)
        adapter: a PEFT adapter folder trained on this model and plan
        run: a training run folder (plan.json, adapter/, base.safetensors, as qra train writes
            it): evaluates the model exactly as trained; not with --plan or --adapter; MODEL
            omitted: the model the run records (train.json, else its adapter)
        tasks: comma-separated task names or groups, e.g. suite or arc_easy,ppl_wiki; a path to a
            .txt/.json/.jsonl file or save_to_disk folder (or ppl:SOURCE) adds perplexity on that
            corpus
        limit: documents per task (windows for perplexity); omitted: all
        batch_size: sequences per forward pass
        seq_len: perplexity window in tokens
        stride: perplexity stride in tokens; omitted: non-overlapping windows (each token scored
            once); smaller than --seq-len: overlapping windows that score their last STRIDE tokens
        backend: qradaptor (our batched scorer) or harness (lm-evaluation-harness itself) for the
            zero-shot tasks
        device: auto (cuda if available), cpu or cuda; bf16 on cuda, fp32 on cpu
        max_memory: refuse to start unless the predicted peak fits SIZE (e.g. 24GB, 24GiB,
            24000MB), checked from the model's config before any weight loads; on CUDA the
            process is also capped at SIZE
        seed: random seed
        output: write the results as JSON to this file (written atomically)
        force: overwrite --output if it exists
        resume: complete --output, if it exists, with the tasks it lacks: the tasks it holds are
            kept and not scored again; it must have been written with this plan and these
            settings (limit, batch size, seq len, stride, backend, seed, dtype)
        as_json: print JSON instead of the table
        no_progress: no progress output
        whole_inputs: run every input whole, as lm-eval does; by default inputs that share a
            long prefix (MMLU's 5-shot examples of a subject) run it once, about 3x faster for
            MMLU, with scores that agree to float tolerance
    """
    from qradaptor.cli import max_memory as limits
    from qradaptor.eval.suite import resolve_tasks

    memory_cap = limits.parse(max_memory)  # bytes, None: no --max-memory
    names = resolve_tasks([t.strip() for t in tasks.split(",") if t.strip()])
    from qradaptor.data import load_texts
    from qradaptor.eval.suite import USER_PPL_PREFIX

    for name in names:  # a corpus of one's own that can't be read fails before the model loads
        if name.startswith(USER_PPL_PREFIX):
            load_texts(name.removeprefix(USER_PPL_PREFIX))
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of documents, got {limit}")
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"--batch-size must be >= 1 and --seq-len >= 2, got {batch_size} and {seq_len}")
    if backend not in ("qradaptor", "harness"):
        raise ValueError(f"--backend must be qradaptor or harness, got {backend!r}")
    check_device(device)
    if run is not None and (plan is not None or adapter is not None):
        given_too = " and ".join(o for o, v in (("--plan", plan), ("--adapter", adapter)) if v is not None)
        raise ValueError(f"--run {run!r} names the plan and adapter itself; do not also give {given_too}")
    files = None
    if run is not None:
        from qradaptor.runs import read_run

        files = read_run(run)  # a bad or unfinished run folder fails now, before any model is loaded
    if resume and force:
        raise ValueError("--resume keeps what --output holds and --force overwrites it; give one of them")
    prior = _prior_results(output, resume, limit, batch_size, seq_len, stride, backend, seed)
    if prior is not None:
        done = set(prior[1]["tasks"])  # a list: _prior_results checked
        if all(name in done for name in names):
            held = ", ".join(names)
            print(f"qra eval: {output!r} already holds {held}; nothing to evaluate", file=sys.stderr)
            return 0
    elif output is not None:
        check_output(output, force=force)  # fail now, not after an hour of evaluation
    if files is not None and not files.finished:
        print(UNFINISHED.format(run=run), file=sys.stderr)
    given = read_plan(plan) if plan else None

    import torch

    from qradaptor.assemble import assemble
    from qradaptor.eval.results import format_table, to_json
    from qradaptor.eval.suite import run_suite, zero_shot_average
    from qradaptor.eval.task import EvalSettings
    from qradaptor.models.provenance import read_provenance
    from qradaptor.plan import Plan
    from qradaptor.runs import assemble_run

    device = resolve_device(device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    the_plan = given
    if given is not None:
        from qradaptor.cli.common import load_structure

        structure = load_structure(model)[1]  # the config only: a plan that does not fit fails before loading
        the_plan = Plan.uniform(structure.num_blocks, *given) if isinstance(given, tuple) else given
        the_plan.validate(structure)
    known = files.plan if files is not None else the_plan  # None: the base as loaded, known once built
    if prior is not None:
        _check_same_model(output, prior[1], str(dtype).removeprefix("torch."), known)
    if memory_cap is not None:
        from qradaptor.cli.common import load_structure

        source = model if model is not None or files is None else files.source
        planned = files.plan if files is not None else the_plan
        limits.check_eval(
            memory_cap,
            load_structure(source)[1],
            planned if isinstance(planned, Plan) else None,
            batch_size=batch_size,
            seq_len=seq_len,
            device=device,
        )
    started = time.perf_counter()
    if run is not None:
        built = assemble_run(run, model, dtype=dtype, device=device, progress=not no_progress)
    else:
        built = assemble(model, the_plan, adapter, dtype=dtype, device=device, progress=not no_progress)
    scored = names
    if prior is not None:
        if known is None:
            _check_same_model(output, prior[1], str(dtype).removeprefix("torch."), built.plan)
        scored = [name for name in names if name not in prior[1]["tasks"]]
    settings = EvalSettings(limit, batch_size, seq_len, stride, backend, seed, whole_inputs=whole_inputs)
    if not no_progress:  # what it will do, priced here, before doing it
        from qradaptor.eval.cost import eval_line

        print(f"qra eval: {eval_line(built.model, built.tokenizer, scored, settings)}", file=sys.stderr)
    with _dequantised_once_if_room(built.model, device, memory_cap) as held:
        if held and not no_progress:
            print(
                f"qra eval: packed weights dequantised once for the run ({held / 2**20:,.0f} MiB)",
                file=sys.stderr,
            )
        records = run_suite(
            built.model,
            built.tokenizer,
            scored,
            model_name=built.source,
            plan_hash=built.plan.plan_hash,
            adapter=built.adapter,
            limit=limit,
            batch_size=batch_size,
            seq_len=seq_len,
            stride=stride,
            backend=backend,
            seed=seed,
            progress=not no_progress,
            whole_inputs=whole_inputs,
        )
    seconds = time.perf_counter() - started
    if prior is not None:  # the tasks it held first, in their order, then the new ones
        names = [*prior[1]["tasks"], *(name for name in names if name not in prior[1]["tasks"])]
        order = {name: i for i, name in enumerate(names)}
        records = sorted([*prior[0], *records], key=lambda r: order.get(r.task, len(order)))
        seconds += prior[1].get("seconds") or 0.0
    meta = {
        "model": built.source,
        "plan": built.plan.to_dict(),
        "plan_hash": built.plan.plan_hash,
        "adapter": built.adapter,
        "run": run,
        "base": built.base,
        "tasks": names,
        "limit": limit,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "stride": stride,
        "backend": backend,
        # When our scorer (MMLU's always) runs a prefix that inputs share once (eval.prefix).
        "shared_prefix": dataclasses.asdict(settings.share_prefix) if settings.share_prefix else None,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "seed": seed,
        "seconds": round(seconds, 2),
        "zero_shot_avg_acc": zero_shot_average(records, "acc"),
        "zero_shot_avg_acc_norm": zero_shot_average(records, "acc_norm"),
        "provenance": read_provenance(built.source).to_dict(),  # what the "16-bit" base really is
    }
    text = to_json(records, meta)
    if output is not None:
        write_text_atomic(output, text + "\n", force=force or prior is not None)
    if as_json:
        print(text)
    else:
        print(
            f"model {built.source}  plan {built.plan.name or built.plan.plan_hash}  adapter {built.adapter}"
        )
        print(f"weights: {meta['provenance']['text']}")
        print(format_table(records))
        avg = meta["zero_shot_avg_acc"]
        if avg is not None:
            print(f"zero-shot average acc {avg:.4f}  acc_norm {meta['zero_shot_avg_acc_norm']:.4f}")
        print(f"{meta['seconds']:.1f} s on {device}")
    return 0


VERB = eval


def add_arguments(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """Options of ``qra eval``."""
    parser.add_argument("model", nargs="?", default=None, help=helps["model"])
    parser.add_argument("--plan", metavar="FILE|uniform:BITS:RANK", help=helps["plan"])
    parser.add_argument("--adapter", metavar="DIR", help=helps["adapter"])
    parser.add_argument("--run", metavar="RUN", help=helps["run"])
    parser.add_argument("--tasks", default="suite", help=helps["tasks"])
    parser.add_argument("--limit", type=int, metavar="N", help=helps["limit"])
    parser.add_argument("--batch-size", type=int, default=16, metavar="B", help=helps["batch_size"])
    parser.add_argument("--seq-len", type=int, default=512, metavar="T", help=helps["seq_len"])
    parser.add_argument("--stride", type=int, metavar="S", help=helps["stride"])
    parser.add_argument(
        "--backend", choices=("qradaptor", "harness"), default="qradaptor", help=helps["backend"]
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help=helps["device"])
    parser.add_argument("--max-memory", metavar="SIZE", help=helps["max_memory"])
    parser.add_argument("--seed", type=int, default=1234, help=helps["seed"])
    parser.add_argument("-o", "--output", metavar="FILE", help=helps["output"])
    parser.add_argument("--force", action="store_true", help=helps["force"])
    parser.add_argument("--resume", action="store_true", help=helps["resume"])
    parser.add_argument("--json", dest="as_json", action="store_true", help=helps["as_json"])
    parser.add_argument("--whole-inputs", action="store_true", help=helps["whole_inputs"])


def _dequantised_once_if_room(model: Any, device: str, memory_cap: int | None) -> Any:
    """``quant.modules.dequantised_once`` (the same scores, no dequantisation per forward) when
    its bytes fit: no --max-memory (a capped evaluation is priced packed) and at most half of
    what the device has free; else a context that holds nothing (yields 0)."""
    import contextlib

    from qradaptor.distributed.launch import free_memory
    from qradaptor.quant.modules import dense_bytes, dequantised_once

    need = dense_bytes(model)
    if need == 0 or memory_cap is not None:
        return contextlib.nullcontext(0)
    free = free_memory([device])[device]
    return dequantised_once(model) if need <= free // 2 else contextlib.nullcontext(0)


def _prior_results(
    output: str | None,
    resume: bool,
    limit: int | None,
    batch_size: int,
    seq_len: int,
    stride: int | None,
    backend: str,
    seed: int,
) -> tuple[list[Any], dict[str, Any]] | None:
    """With --resume and an existing --output: its records and meta, once its settings are these.

    Raises:
        ValueError: --resume without --output, a file qra eval did not write, or one written
            with other settings (naming each).
    """
    if not resume:
        return None
    if output is None:
        raise ValueError("--resume completes the results file that --output names; give -o FILE")
    from pathlib import Path

    from qradaptor.eval.results import read_results

    if not Path(output).expanduser().is_file():
        return None  # nothing to complete yet: a fresh evaluation
    records, meta = read_results(output)
    asked = {"limit": limit, "batch_size": batch_size, "seq_len": seq_len, "stride": stride}
    asked |= {"backend": backend, "seed": seed}
    differ = [f"{key} {meta.get(key)!r} (asked {v!r})" for key, v in asked.items() if meta.get(key) != v]
    if differ or not isinstance(meta.get("tasks"), list):
        why = ", ".join(differ) if differ else "no list of tasks in its meta"
        raise ValueError(
            f"--resume: {output!r} was written with other settings: {why}; give the same settings, "
            "or --force without --resume to evaluate everything again"
        )
    return records, meta


def _check_same_model(output: str | None, meta: dict[str, Any], dtype: str, plan: Plan | None) -> None:
    """--resume: the results being completed were scored on this plan and in this dtype.

    Raises:
        ValueError: naming what differs (the plan hash or the dtype).
    """
    differ = [f"dtype {meta.get('dtype')!r} (now {dtype!r})"] if meta.get("dtype") != dtype else []
    if plan is not None and meta.get("plan_hash") != plan.plan_hash:
        differ.append(f"plan {meta.get('plan_hash')!r} (now {plan.plan_hash!r})")
    if differ:
        raise ValueError(
            f"--resume: {output!r} was scored on another model: {', '.join(differ)}; "
            "evaluate into another file, or --force without --resume to start over"
        )
