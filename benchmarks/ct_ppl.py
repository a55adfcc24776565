"""A compressed-tensors export read back and scored against the run, on ``qra eval``'s windows.

The folder is read as transformers reads it (``ct_readback.transformers_model``: one config
group) or, for a mixed plan that transformers cannot dequantise, by compressed-tensors' own
decompressor scheme by scheme (``ct_readback.decompressed_model``, what vLLM's per-layer
schemes compute). The run is built as ``qra eval --run`` builds it (``assemble_run``). Both
score the windows ``benchmarks/gguf_ppl.py`` cuts (``qra eval --tasks ppl_wiki``'s), and the
largest |logit difference| over every scored position is reported with both perplexities.

    python benchmarks/ct_ppl.py --folder OUT --run RUN --limit 32
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from gguf_ppl import windows

from qradaptor.eval.suite import PPL_CORPORA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", required=True, help="the compressed-tensors export")
    parser.add_argument("--run", required=True, help="the run it was exported from")
    parser.add_argument("--corpus", choices=tuple(PPL_CORPORA), default="ppl_wiki")
    parser.add_argument("--seq-len", type=int, default=512, help="qra eval's default")
    parser.add_argument("--limit", type=int, default=32, help="windows (qra eval --limit)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from qradaptor.export.ct_readback import decompressed_model, transformers_model
    from qradaptor.runs import assemble_run

    torch.set_num_threads(args.threads)
    config = json.loads((Path(args.folder) / "config.json").read_text())["quantization_config"]
    one_group = len(config["config_groups"]) == 1
    start = time.perf_counter()
    folder = (transformers_model if one_group else decompressed_model)(args.folder, torch.float32)
    built = assemble_run(args.run)
    batches = windows(built.tokenizer, args.corpus, args.seq_len, args.limit)
    totals, count, worst = [0.0, 0.0], 0, 0.0
    with torch.no_grad():
        for ids in batches:
            x = torch.tensor([ids])
            # (T - 1, V) logits of the folder, then of the run
            both = [model(input_ids=x).logits[0, :-1].double() for model in (folder, built.model)]
            for i, logits in enumerate(both):
                nll = logits.logsumexp(-1) - logits.gather(-1, x[0, 1:, None]).squeeze(-1)
                totals[i] += float(nll.sum())
            worst = max(worst, float((both[0] - both[1]).abs().max()))
            count += len(ids) - 1
    size = sum(p.stat().st_size for p in Path(args.folder).glob("*.safetensors"))
    record = json.loads((Path(args.folder) / "qradaptor_export.json").read_text())
    result = {
        "folder": args.folder,
        "run": args.run,
        "read_by": "transformers" if one_group else "compressed-tensors decompressor",
        "weights_bytes": size,
        "planned_bytes": record["planned_bytes"],
        "max_rel_error": record["max_rel_error"],
        "windows": len(batches),
        "tokens": count,
        "ppl_folder": math.exp(totals[0] / count),
        "ppl_run": math.exp(totals[1] / count),
        "max_abs_logit_diff": worst,
        "seconds": round(time.perf_counter() - start, 1),
    }
    result["ppl_gap"] = result["ppl_folder"] / result["ppl_run"] - 1
    print(json.dumps(result))


if __name__ == "__main__":
    main()
