"""Issue 16's GPU run: every stage of the real CLI on 1B- and 8B-shaped Llama models under a cap.

Builds randomly initialised Llama models of the issue's shapes (bf16 safetensors with the
SmolLM2 tokenizer), then runs ``python -m qradaptor profile | search | train | eval`` on each
and on the embedded SmolLM2, each as its own child process with ``--max-memory`` (and
``--dtype bf16`` where the verb takes it), and measures per stage: wall time, GPU peak
(``nvidia-smi`` polled every 0.5 s over the child's process tree, and the child's own
``torch.cuda.max_memory_allocated`` at exit), host RSS peak (``wait4``'s ``ru_maxrss`` of the
child, and the polled tree's RSS), exit code and last error line; training tokens/s from
train.json. Two more runs show the cap holds: a stage given a limit below its need (refused by
the tool, or CUDA out of memory: recorded which), and on CUDA an allocation past the cap.

Random weights: losses and perplexities mean nothing here; only time and memory do. The text
is a synthetic word corpus written into --work, so no dataset is needed.

    python benchmarks/scale_models.py --work /tmp/scale --out scale.json            # 1b,8b + SmolLM2
    python benchmarks/scale_models.py --work /tmp/scale --shapes 8b --no-smollm2 --search-preset default
    python benchmarks/scale_models.py --work /tmp/scale --dry-run                   # commands only

Results go to --out (JSON) after every stage, so a run cut off keeps what it did; the
markdown table goes to stdout and progress lines to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from scale_measure import Stage, cuda_cap_probe, log, run_stage  # benchmarks/, the script's folder

SHAPES = {  # hidden, blocks, attention heads, key-value heads, MLP width (vocab: the tokenizer's)
    "tiny": (64, 2, 4, 2, 128),
    "1b": (2048, 16, 32, 8, 8192),
    "8b": (4096, 32, 32, 8, 14336),
}
STAGES = ("profile", "search", "train", "eval")
SEARCH_PRESETS = {
    "default": (),  # qra search's own defaults (--preset auto: full on CUDA)
    "capped": (
        "--calibration-samples",
        "4",
        "--candidates",
        "6",
        "--rungs",
        "1",
        "--steps",
        "6",
        "--bayes-iterations",
        "0",
        "--no-references",
    ),
}
"""Flags added to ``qra search --budget 4.0bits``; "capped" keeps an 8B search to minutes."""
SMOLLM2 = "smollm2"


def verb_options() -> dict[str, set[str]]:
    """Every verb's option strings, read from qra's own parser (no subprocess)."""
    from qradaptor.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {verb: set(sub._option_string_actions) for verb, sub in subparsers.choices.items()}


def write_corpus(path: Path, words: int, seed: int = 0) -> Path:
    """A .txt corpus of ``words`` pseudo-words in documents of 300 (blank-line separated)."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ber", "dan", "gol", "pir", "tes", "wun"]
    lexicon = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(2000)]
    docs = [" ".join(rng.choice(lexicon) for _ in range(300)) + "." for _ in range(max(1, words // 300))]
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path


def build_model(shape: str, folder: Path, device: str, seed: int = 0) -> dict[str, Any]:
    """A randomly initialised Llama of ``SHAPES[shape]``, saved in bf16 with SmolLM2's tokenizer.

    Built on ``device`` directly in bf16 (an 8B is 16 GB there, never an fp32 copy on the host);
    ``save_pretrained`` moves one 2 GB shard at a time to the host. Reused when the folder
    already holds this shape (``scale_shape.json``).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from qradaptor.models.loading import load_tokenizer

    marker = folder / "scale_shape.json"
    if marker.is_file() and json.loads(marker.read_text()).get("shape") == list(SHAPES[shape]):
        log(f"{shape}: reusing {folder}")
        return json.loads(marker.read_text())
    hidden, blocks, heads, kv_heads, mlp = SHAPES[shape]
    tokenizer = load_tokenizer(None)  # the embedded SmolLM2's, read from its GGUF
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=blocks,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    started = time.perf_counter()
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.config.dtype = torch.bfloat16
    params = sum(p.numel() for p in model.parameters())
    built = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, max_shard_size="2GB")
    tokenizer.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    info = {
        "shape": list(SHAPES[shape]),
        "vocab": len(tokenizer),
        "params": params,
        "build_s": round(built, 1),
        "save_s": round(time.perf_counter() - started - built, 1),
    }
    marker.write_text(json.dumps(info))
    log(f"{shape}: {params / 1e9:.2f}B parameters built in {built:.0f} s, saved to {folder}")
    return info


def plan_stages(
    model: str,
    source: str | None,
    args: argparse.Namespace,
    options: dict[str, set[str]],
    out: Path,
    corpus: Path,
) -> list[Stage]:
    """The CLI runs of one model (``source`` None: the embedded SmolLM2)."""
    where = [] if source is None else [source]
    cap = ["--max-memory", args.max_memory]
    common = ["--device", args.device, "--no-progress"]

    def dtype(verb: str) -> list[str]:
        return ["--dtype", "bf16"] if "--dtype" in options[verb] and args.device != "cpu" else []

    win = ["--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size)]
    stages = []
    if "profile" in args.stages:
        argv = [
            "profile",
            *where,
            "-o",
            str(out / "profile"),
            "--data",
            str(corpus),
            "--samples",
            str(args.windows),
            *win,
            "--force",
            *dtype("profile"),
            *cap,
            *common,
        ]
        stages.append(Stage(model, "profile", argv))
    if "search" in args.stages:
        argv = [
            "search",
            *where,
            "--budget",
            "4.0bits",
            "-o",
            str(out / "search"),
            "--data",
            str(corpus),
            *SEARCH_PRESETS[args.search_preset],
            *dtype("search"),
            *cap,
            *common,
        ]
        stages.append(Stage(model, f"search {args.search_preset}", argv))
    if "train" in args.stages:
        for method in args.train_methods:
            how = ["--plan", "uniform:4:16"] if method == "packed4" else ["--method", method, "--rank", "16"]
            run = out / f"train-{method}"
            argv = [
                "train",
                *where,
                "-o",
                str(run),
                *how,
                "--text",
                "--data",
                str(corpus),
                "--max-steps",
                str(args.train_steps),
                *win,
                "--eval-size",
                "0",
                "--allow-collapse",
                "--force",
                *dtype("train"),
                *cap,
                *common,
            ]
            stages.append(Stage(model, f"train {method}", argv, run_dir=run))
    if "eval" in args.stages:
        argv = [
            "eval",
            *where,
            "--plan",
            "uniform:4:16",
            "--tasks",
            f"ppl:{corpus}",
            "--limit",
            str(args.eval_windows),
            "--seq-len",
            str(args.seq_len),
            "--json",
            "-o",
            str(out / "eval.json"),
            "--force",
            *dtype("eval"),
            *cap,
            *common,
        ]
        stages.append(Stage(model, "eval", argv))
    return stages


def cap_refusal_stage(stage: Stage, limit: str) -> Stage:
    """``stage`` again with ``--max-memory limit``, below its need."""
    argv = list(stage.argv)
    argv[argv.index("--max-memory") + 1] = limit
    return Stage(stage.model, f"cap {limit} ({stage.name})", argv)


def markdown(results: list[dict[str, Any]]) -> str:
    """One row per stage."""
    # host MiB: the polled tree's RSS peak (ru_maxrss carries this process's own peak, see
    # scale_measure), ru_maxrss where nothing was polled.
    head = "| model | stage | exit | wall s | GPU MiB (pid / device / torch) | host MiB | tok/s | note |"
    rows = [head, "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        gpu = "{} / {} / {}".format(
            r.get("gpu_peak_mib_nvidia_smi"),
            r.get("gpu_device_used_peak_mib"),
            r.get("gpu_max_allocated_mib"),
        )
        note = (r.get("last_error") or r.get("message") or "").replace("|", "/")[:160]
        rows.append(
            f"| {r['model']} | {r['stage']} | {r['exit_code']} | {r.get('wall_s', '')} | {gpu} "
            f"| {r.get('host_tree_rss_peak_mib') or r.get('host_maxrss_mib')} "
            f"| {r.get('steady_tokens_per_s') or ''} | {note} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the models, corpus and runs")
    parser.add_argument("--out", type=Path, help="JSON results file (written after every stage)")
    parser.add_argument("--shapes", default="1b,8b", help=f"comma-separated of {', '.join(SHAPES)}")
    parser.add_argument("--no-smollm2", action="store_true", help="skip the embedded SmolLM2 comparison")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated of " + ", ".join(STAGES))
    parser.add_argument(
        "--train-methods",
        default="packed4,lora16,qlora-nf4",
        help="packed4 (--plan uniform:4:16) and/or qra train --method names",
    )
    parser.add_argument(
        "--search-preset",
        choices=SEARCH_PRESETS,
        default="capped",
        help="capped (default: fits the 8-minute run) or default (qra search's own)",
    )
    parser.add_argument("--max-memory", default="24GB", help="each stage's --max-memory")
    parser.add_argument("--cap-limit", default="2GB", help="the limit of the refused run and the CUDA probe")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--windows", type=int, default=4, help="profile calibration windows")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument(
        "--stage-timeout", type=float, default=600.0, help="seconds per stage before it is killed"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands; build and run nothing")
    args = parser.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.stages = [s for s in args.stages.split(",") if s]
    args.train_methods = [m for m in args.train_methods.split(",") if m]
    for name, given, allowed in (("--shapes", args.shapes, SHAPES), ("--stages", args.stages, STAGES)):
        bad = [x for x in given if x not in allowed]
        if bad or not given:
            parser.error(f"{name} takes a comma-separated list of {', '.join(allowed)}; got {bad or given}")
    for name in ("windows", "seq_len", "batch_size", "train_steps", "eval_windows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.stage_timeout <= 0:
        parser.error(f"--stage-timeout must be more than 0 seconds, got {args.stage_timeout}")
    from qradaptor.stage_memory import parse_size

    for option in ("--max-memory", "--cap-limit"):
        try:
            parse_size(getattr(args, option[2:].replace("-", "_")), option)
        except ValueError as err:
            parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = verb_options()
    work = args.work.resolve()
    corpus = work / "corpus.txt"
    models: list[tuple[str, str | None]] = [(s, str(work / "models" / s)) for s in args.shapes]
    if not args.no_smollm2:
        models.append((SMOLLM2, None))
    plans = {m: plan_stages(m, src, args, options, work / "runs" / m, corpus) for m, src in models}
    largest = models[len(args.shapes) - 1][0] if args.shapes else SMOLLM2
    probe = cap_refusal_stage(plans[largest][0], args.cap_limit) if plans[largest] else None
    meta = {
        "argv": sys.argv[1:] if argv is None else argv,
        "search_flags": list(SEARCH_PRESETS[args.search_preset]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": args.device,
        "child": "python -c <peak-recording wrapper> = python -m qradaptor ARGS",
    }
    if args.dry_run:
        for stages in plans.values():
            for stage in stages:
                print(f"{stage.model:8s} {stage.name:22s} {stage.command()}")
        if probe is not None:
            print(f"{probe.model:8s} {probe.name:22s} {probe.command()}")
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "scale_models: error: --device cuda but CUDA is not available; use --device cpu", file=sys.stderr
        )
        return 2
    work.mkdir(parents=True, exist_ok=True)
    write_corpus(corpus, words=max(60_000, 3 * args.eval_windows * args.seq_len))
    meta["device_name"] = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    report: dict[str, Any] = {"meta": meta, "models": {}, "results": []}

    def save() -> None:
        if args.out is not None:
            args.out.write_text(json.dumps(report, indent=1))

    for model, source in models:
        if source is not None:
            try:
                report["models"][model] = build_model(model, Path(source), args.device)
            except Exception as err:  # noqa: BLE001 - recorded; the other models still run
                log(f"{model}: build failed: {type(err).__name__}: {err}")
                report["results"].append(
                    {
                        "model": model,
                        "stage": "build",
                        "exit_code": 1,
                        "last_error": f"{type(err).__name__}: {err}"[:500],
                    }
                )
                save()
                continue
        for stage in plans[model]:
            report["results"].append(run_stage(stage, args.stage_timeout, work / "logs", poll=True))
            save()
    if probe is not None:
        result = run_stage(probe, args.stage_timeout, work / "logs", poll=True)
        text = (result["last_error"] or "").lower()
        result["cap_outcome"] = (
            "no failure: the limit was not below the need"
            if result["exit_code"] == 0
            else "CUDA out of memory"
            if "out of memory" in text
            else "refused by qra's prediction"
            if "--max-memory" in text
            else "other failure"
        )
        report["results"].append(result)
    if args.device == "cuda":
        report["results"].append(cuda_cap_probe(args.max_memory, args.stage_timeout))
    save()
    print(markdown(report["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
