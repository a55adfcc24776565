"""llama.cpp's speed on exported GGUF files, side by side: prompt tokens/s and generation tokens/s.

Each file is loaded once (llama-cpp-python, ``--threads`` threads); then ``--rounds`` rounds
each time every file in turn (so load from other work falls on all of them alike): a prompt of
``--prompt-tokens`` token ids evaluated in one batch, then ``--new-tokens`` tokens generated
greedily one at a time. The table gives the median of the rounds and each file's ratio to the
first file's. The prompt is fixed token ids (the same for every file), not text, so every file
does the same work whatever its tokenizer does with text.

    python benchmarks/gguf_speed.py u4.gguf u8.gguf mixed.gguf --threads 2 --out speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="+", help="GGUF files; the first is the reference of the ratios")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="JSON results file")
    args = parser.parse_args(argv)
    for name in ("threads", "prompt_tokens", "new_tokens", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        parser.error(f"no such GGUF file: {', '.join(missing)}")
    return args


def one_round(llm, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) of one prompt and one greedy generation."""
    llm.reset()
    began = time.perf_counter()
    llm.eval(prompt)
    prompt_seconds = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(new_tokens):
        token = llm.sample(top_k=1, temp=0.0)
        llm.eval([token])
    generate_seconds = time.perf_counter() - began
    return len(prompt) / prompt_seconds, new_tokens / generate_seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import llama_cpp

    n_ctx = args.prompt_tokens + args.new_tokens + 8
    models = {
        path: llama_cpp.Llama(
            model_path=path, n_ctx=n_ctx, n_batch=args.prompt_tokens, n_threads=args.threads, verbose=False
        )
        for path in args.files
    }
    vocab = min(llm.n_vocab() for llm in models.values())
    prompt = [
        (7919 * k) % (vocab // 2) + vocab // 4 for k in range(args.prompt_tokens)
    ]  # fixed, mid-vocabulary
    for llm in models.values():
        one_round(llm, prompt[:8], 2)  # warm-up: first-call allocations
    rates: dict[str, list[tuple[float, float]]] = {path: [] for path in args.files}
    for r in range(args.rounds):
        for path, llm in models.items():
            rates[path].append(one_round(llm, prompt, args.new_tokens))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    for path in args.files:
        prompt_rate = statistics.median(p for p, _ in rates[path])
        gen_rate = statistics.median(g for _, g in rates[path])
        rows.append(
            {"file": path, "bytes": os.path.getsize(path), "prompt_tok_s": prompt_rate, "gen_tok_s": gen_rate}
        )
    ref = rows[0]
    print("| file | bytes | prompt tok/s | x first | generation tok/s | x first |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {Path(row['file']).name} | {row['bytes']:,} | {row['prompt_tok_s']:.1f} | "
            f"{row['prompt_tok_s'] / ref['prompt_tok_s']:.2f} | {row['gen_tok_s']:.2f} | "
            f"{row['gen_tok_s'] / ref['gen_tok_s']:.2f} |"
        )
    if args.out:
        meta = {
            "threads": args.threads,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "rounds": args.rounds,
            "llama_cpp_python": llama_cpp.__version__,
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows, "rounds": rates}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
