"""Perplexity of an exported GGUF through llama.cpp, on the very windows ``qra eval`` scores.

The corpus is tokenised by the run's own tokenizer into the stream ``eval.perplexity`` builds
(documents joined by EOS, no BOS) and cut into the same non-overlapping windows of ``--seq-len``
tokens (the first token of each window is context only). Each window's token ids go to
llama.cpp (``llama-cpp-python``) as they are, and the mean negative log-likelihood of the
scored tokens is computed from llama.cpp's logits:

    NLL = -(1 / N) sum_k sum_{j = 1}^{T - 1} log softmax(z_k[j - 1])[t_k[j]],    PPL = exp(NLL)

``--backend ours`` scores the same file through our own path instead (transformers reads and
dequantises the GGUF, ``eval.perplexity`` scores it): the check when llama.cpp is not built.
With ``--run RUN`` the trained run (``assemble_run``, what ``qra eval --run`` scores) is
scored on the same windows, and the gap is printed.

    python benchmarks/gguf_ppl.py --gguf model.gguf --run RUN --limit 16
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np

from qradaptor.data import load_texts
from qradaptor.data.packing import token_stream
from qradaptor.eval.suite import PPL_CORPORA


def windows(tokenizer, corpus: str, seq_len: int, limit: int | None) -> list[list[int]]:
    """The non-overlapping windows ``eval.perplexity.perplexity`` scores (stride = seq_len)."""
    needed = None if limit is None else seq_len * limit
    stream, _ = token_stream(load_texts(PPL_CORPORA[corpus][0]), tokenizer, needed)
    count = (len(stream) - seq_len) // seq_len + 1
    count = count if limit is None else min(count, limit)
    return [stream[k * seq_len : (k + 1) * seq_len] for k in range(count)]


def llama_cpp_nll(
    path: str, batches: list[list[int]], threads: int, lora: str | None = None
) -> tuple[float, int, str]:
    """(mean NLL, scored tokens, llama.cpp version) of ``path`` (with LoRA file ``lora``) on ``batches``."""
    import llama_cpp

    seq_len = len(batches[0])
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=seq_len,
        n_batch=seq_len,
        logits_all=True,
        n_threads=threads,
        verbose=False,
        **({"lora_path": lora} if lora else {}),
    )
    total, count = 0.0, 0
    for ids in batches:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)  # (T, V): row j predicts j + 1
        z = logits[:-1]
        lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
        total += float((lse - z[np.arange(len(ids) - 1), ids[1:]]).sum())
        count += len(ids) - 1
    return total / count, count, llama_cpp.__version__


def torch_nll(model, batches: list[list[int]]) -> tuple[float, int]:
    """(mean NLL, scored tokens) of a transformers-style ``model`` on ``batches``."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ids in batches:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, :-1].double()  # (T - 1, V)
            nll = logits.logsumexp(-1) - logits.gather(-1, x[0, 1:, None]).squeeze(-1)
            total += float(nll.sum())
            count += len(ids) - 1
    return total / count, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", required=True, help="the exported GGUF")
    parser.add_argument("--lora", help="a GGUF LoRA adapter for llama.cpp to apply (--adapter separate)")
    parser.add_argument("--run", help="also score this training run (as qra eval --run does)")
    parser.add_argument("--backend", choices=("llama-cpp", "ours"), default="llama-cpp")
    parser.add_argument("--corpus", choices=tuple(PPL_CORPORA), default="ppl_wiki")
    parser.add_argument("--seq-len", type=int, default=512, help="qra eval's default")
    parser.add_argument("--limit", type=int, default=16, help="windows (qra eval --limit)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.lora and args.backend != "llama-cpp":
        parser.error("--lora needs --backend llama-cpp")

    import torch

    from qradaptor.models.loading import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.gguf)
    batches = windows(tokenizer, args.corpus, args.seq_len, args.limit)
    result: dict[str, object] = {"gguf": args.gguf, "lora": args.lora, "corpus": args.corpus}
    result["seq_len"] = args.seq_len
    result.update(windows=len(batches), backend=args.backend, machine=platform.machine())
    start = time.perf_counter()
    if args.backend == "llama-cpp":
        nll, tokens, version = llama_cpp_nll(args.gguf, batches, args.threads, args.lora)
        result["llama_cpp_python"] = version
    else:
        nll, tokens = torch_nll(load_model(args.gguf).model, batches)
    result.update(nll=nll, ppl=math.exp(nll), tokens=tokens, seconds=round(time.perf_counter() - start, 1))
    if args.run:
        from qradaptor.runs import assemble_run

        run_nll, _ = torch_nll(assemble_run(args.run).model, batches)
        result.update(run_nll=run_nll, run_ppl=math.exp(run_nll))
        result["ppl_gap"] = math.exp(nll) / math.exp(run_nll) - 1
    print(json.dumps(result))


if __name__ == "__main__":
    main()
