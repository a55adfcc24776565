"""Bad inputs and faults, tried as a hostile user would: the table of docs/RELIABILITY.md.

Every case runs the real command (``python -m qradaptor VERB ...``) in a child process, on
the CPU, against a tiny Llama written to a temporary folder (hidden 64, 3 blocks) or, for
the damaged GGUF files, cut-down copies of the embedded SmolLM2 GGUF. A bad input passes
when the command exits 2 (3 for a collapsed run) with exactly one line on stderr that names
what is wrong, and no traceback. The fault runs kill a search and a training with SIGKILL
mid-run and resume them, and start two writers on one run folder and on one study; they
report the trials (training steps) lost and repeated.

    PYTHONPATH=src python benchmarks/reliability.py --out /tmp/reliability      # ~10 min on 2 cores

Prints a markdown table per part; ``--only bad`` or ``--only faults`` runs one part.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TINY_TRAIN = ["--max-steps", "6", "--batch-size", "2", "--seq-len", "32", "--eval-size", "2", "--no-progress"]
TINY_SEARCH = [
    "--budget", "3.6bits", "--seq-len", "16", "--steps", "2", "--batch-size", "2", "--eval-batches", "1",
    "--calibration-samples", "2", "--population", "3", "--generations", "2", "--bayes-iterations", "2",
    "--group-size", "32", "--ranks", "4,8", "--strategy", "paper", "--device", "cpu",
]  # fmt: skip


def qra(*argv: object, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m qradaptor ARGV`` on the CPU, one thread (a shared two-core machine)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "qradaptor", *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def one_clear_line(result: subprocess.CompletedProcess, codes: tuple[int, ...] = (2,)) -> bool:
    """The pass rule: the expected exit code, one stderr line naming the error, no traceback."""
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning:")]
    return (
        result.returncode in codes
        and len(lines) == 1
        and "error:" in lines[0]
        and "Traceback" not in result.stderr
    )


# ----- fixtures: a tiny model, data, a trained run ---------------------------------------------
def tiny_model(folder: Path) -> Path:
    """A 3-block Llama (hidden 64) and a word tokenizer of a, b, c, saved as a model folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=128,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<eos>", "a", "b", "c"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>").save_pretrained(
        folder
    )
    return folder


def data_files(folder: Path) -> dict[str, Path]:
    """Good and damaged data files."""
    import random

    rng = random.Random(0)
    files = {
        "words": folder / "words.txt",
        "alpaca": folder / "alpaca.jsonl",
        "cut_jsonl": folder / "cut.jsonl",
        "binary": folder / "binary.txt",
        "not_list": folder / "object.json",
    }
    docs = [" ".join(rng.choice("abc") for _ in range(40)) for _ in range(20)]
    files["words"].write_text("\n\n".join(docs))
    rows = [{"instruction": "a b", "input": "c", "output": "a b c" if i % 2 else "c b"} for i in range(12)]
    files["alpaca"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    files["cut_jsonl"].write_text(files["alpaca"].read_text()[:100])
    files["binary"].write_bytes(b"a b c\n" + bytes(range(128, 256)))
    files["not_list"].write_text('{"instruction": "a"}')
    return files


def embedded_gguf_cuts(folder: Path) -> dict[str, Path]:
    """The embedded GGUF cut in its header, in its tensor data, and one byte short."""
    from qradaptor.models.sources import embedded_gguf_path

    whole = embedded_gguf_path().read_bytes()
    cuts = {
        "gguf cut in header": 1000,
        "gguf cut mid-tensors": len(whole) // 2,
        "gguf 1 byte short": len(whole) - 1,
    }
    out = {}
    for name, size in cuts.items():
        path = folder / (name.replace(" ", "-") + ".gguf")
        path.write_bytes(whole[:size])
        out[name] = path
    return out


# ----- part 1: bad inputs per verb ----------------------------------------------------------------
def bad_inputs(work: Path, model: Path, files: dict[str, Path]) -> list[tuple[str, str, bool, str]]:
    """(verb, class, passed, the line) of every bad-input case."""
    run = work / "trained"
    trained = qra("train", model, "--plan", "uniform:4:4", "-o", run, "--data", files["alpaca"], *TINY_TRAIN)
    assert trained.returncode == 0, trained.stderr[-2000:]
    locked = work / "locked"  # not writable: chmod for a user, /sys for root (chmod does not stop root)
    locked.mkdir(exist_ok=True)
    locked.chmod(0o500)
    unwritable = locked if not os.access(locked, os.W_OK) else Path("/sys")
    a_file = work / "a-file"
    a_file.write_text("x")
    cut_adapter = work / "cut-adapter-run"
    subprocess.run(["cp", "-r", str(run), str(cut_adapter)], check=True)
    weights = cut_adapter / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    incomplete = work / "incomplete-run"
    subprocess.run(["cp", "-r", str(run), str(incomplete)], check=True)
    (incomplete / "train.json").unlink()
    (incomplete / ".incomplete").write_text("")
    t = ["--data", files["alpaca"], *TINY_TRAIN]
    s = ["--data", files["words"], "--eval-data", files["words"], *TINY_SEARCH]
    p = ["--samples", "1", "--seq-len", "8", "--bits", "4", "--device", "cpu"]
    e = ["--tasks", "ppl_wiki", "--limit", "1", "--device", "cpu"]
    cases: list[tuple[str, str, list[object]]] = []
    for name, gguf in embedded_gguf_cuts(work).items():
        cases += [
            ("info", name, ["info", gguf]),
            ("memory", name, ["memory", gguf, "--plan", "uniform:4:8"]),
            ("profile", name, ["profile", gguf, "-o", work / "p-gguf", *p]),
            ("eval", name, ["eval", gguf, *e]),
            ("train", name, ["train", gguf, "--plan", "uniform:4:4", "-o", work / "t-gguf", *t]),
            ("search", name, ["search", gguf, "-o", work / "s-gguf", *s]),
        ]
    for cls, data in (("data: jsonl cut mid-record", "cut_jsonl"), ("data: binary .txt", "binary")):
        cases += [
            ("profile", cls, ["profile", model, "-o", work / "p-data", "--data", files[data], *p]),
            ("train", cls, ["train", model, "--plan", "uniform:4:4", "-o", work / "t-data", *t[2:], "--data",
                            files[data], *(["--text"] if data == "binary" else [])]),
            ("search", cls, ["search", model, "-o", work / "s-data", *s[4:], "--data", files[data],
                             "--eval-data", files["words"]]),
        ]  # fmt: skip
    cases += [("train", "data: JSON object, not a list", ["train", model, "--plan", "uniform:4:4", "-o",
               work / "t-obj", *t[2:], "--data", files["not_list"]])]  # fmt: skip
    for cls, where in (("output folder not writable", unwritable), ("output under a file", a_file)):
        cases += [
            ("profile", cls, ["profile", model, "-o", where / "prof", *p]),
            ("eval", cls, ["eval", model, "-o", where / "eval.json", *e]),
            ("train", cls, ["train", model, "--plan", "uniform:4:4", "-o", where / "run", *t]),
            ("search", cls, ["search", model, "-o", where / "search", *s]),
            ("export", cls, ["export", run, "-o", where / "export", "--device", "cpu"]),
        ]
    cases += [
        ("eval", "adapter weights truncated", ["eval", "--run", cut_adapter, *e]),
        ("export", "adapter weights truncated", ["export", cut_adapter, "-o", work / "x1"]),
        ("eval", "run folder incomplete", ["eval", "--run", incomplete, *e]),
        ("export", "run folder incomplete", ["export", incomplete, "-o", work / "x2", "--device", "cpu"]),
        ("memory", "rank above the layer's width", ["memory", model, "--plan", "uniform:4:64"]),
        ("eval", "rank above the layer's width", ["eval", model, "--plan", "uniform:4:64", *e]),
        ("train", "rank above the layer's width",
         ["train", model, "--plan", "uniform:4:64", "-o", work / "t-r", *t]),
    ]  # fmt: skip
    rows = []
    for verb, cls, argv in cases:
        result = qra(*argv)
        line = (
            result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"(exit {result.returncode})"
        )
        rows.append((verb, cls, one_clear_line(result), line[:160]))
        print(f"  {verb:8s} {cls:32s} {'pass' if rows[-1][2] else 'FAIL'}  {line[:110]}", file=sys.stderr)
    locked.chmod(0o700)
    return rows


# ----- part 2: faults -------------------------------------------------------------------------------
def complete_trials(db: Path) -> list[tuple[int, int, str]]:
    """(study id, trial number, plan hash) of every finished trial in an SQLite study file."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return sorted(
                conn.execute(
                    "select t.study_id, t.number, a.value_json from trials t join trial_user_attributes a "
                    "on a.trial_id = t.trial_id where t.state = 'COMPLETE' and a.key = 'plan_hash'"
                ).fetchall()
            )
        except sqlite3.OperationalError:
            return []


def kill_when(argv: list[object], ready: Callable[[], bool], limit: float = 600) -> None:
    """Starts ``qra ARGV`` and SIGKILLs it once ``ready()`` (polled) is true."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    child = subprocess.Popen([sys.executable, "-m", "qradaptor", *map(str, argv)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + limit
    while not ready() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()


def faults(work: Path, model: Path, files: dict[str, Path]) -> list[tuple[str, str, str]]:
    """(fault, what was lost / repeated, outcome) of each fault run."""
    rows = []
    s = ["--data", files["words"], "--eval-data", files["words"], *TINY_SEARCH]
    # 1. kill -9 mid-search, then resume; compared with an uninterrupted search.
    whole, killed = work / "search-whole", work / "search-killed"
    assert qra("search", model, "-o", whole, *s).returncode == 0
    kill_when(["search", model, "-o", killed, *s], lambda: len(complete_trials(killed / "study.db")) >= 4)
    before = complete_trials(killed / "study.db")
    resumed = qra("search", model, "-o", killed, *s)
    after = complete_trials(killed / "study.db")
    lost = len(set(before) - set(after))
    repeated = len(after) - len({h for _, _, h in after})
    same = (killed / "plan.json").read_text() == (whole / "plan.json").read_text()
    same_trials = _trial_losses(killed) == _trial_losses(whole)
    rows.append(("kill -9 mid-search, resume", f"{len(before)} trials done at the kill; {lost} lost, "
                 f"{repeated} repeated", f"exit {resumed.returncode}; plan identical: {same}; "
                 f"trials and losses identical: {same_trials}"))  # fmt: skip
    # 2. kill -9 mid-train (a checkpoint every 2 steps), resume; compared with an uninterrupted run.
    t = [
        "--plan",
        "uniform:4:4",
        "--data",
        files["alpaca"],
        *TINY_TRAIN,
        "--max-steps",
        "12",
        "--save-every",
        "2",
    ]
    whole_t, killed_t = work / "train-whole", work / "train-killed"
    assert qra("train", model, "-o", whole_t, *t).returncode == 0
    checkpoints = killed_t / "checkpoints"
    kill_when(["train", model, "-o", killed_t, *t], lambda: len(list(checkpoints.glob("step-*"))) >= 2)
    at_kill = sorted(p.name for p in checkpoints.glob("step-*"))
    # the newest checkpoint is damaged too (a disk that filled): the resume must fall back and say so
    newest = checkpoints / at_kill[-1] / "adapter.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    again = qra("train", model, "-o", killed_t, *t, "--resume")
    state = json.loads((killed_t / "train.json").read_text())
    same_losses = (killed_t / "loss.csv").read_text() == (whole_t / "loss.csv").read_text()
    said = "older intact checkpoint" in again.stderr
    rows.append(("kill -9 mid-train + newest checkpoint damaged, --resume",
                 f"checkpoints at the kill {at_kill}; "
                 f"resumed from step {state['resumed_from']}; 0 steps lost, "
                 f"{int(at_kill[-1][5:]) - state['resumed_from']} recomputed", f"exit {again.returncode}; "
                 f"fallback said on stderr: {said}; loss curve identical: {same_losses}"))  # fmt: skip
    # 3. two writers on one run folder, started together.
    both = work / "two-writers"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    argv = [sys.executable, "-m", "qradaptor", "search", str(model), "-o", str(both), *map(str, s)]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=900) for p in procs]
    codes = sorted(p.returncode for p in procs)
    refused = [
        err.strip().splitlines()[-1] for (_, err), p in zip(outs, procs, strict=True) if p.returncode == 2
    ]
    trials = complete_trials(both / "study.db")
    repeated = len(trials) - len({h for _, _, h in trials})
    said = refused[0][:140] if refused else "-"
    rows.append(("two `qra search` on one run folder", f"{repeated} trials repeated",
                 f"exit codes {codes}; the refused one said: {said}"))  # fmt: skip
    # 4. two searches on one study of a shared storage (different run folders).
    url = f"sqlite:///{(work / 'shared.db').resolve()}"
    argv2 = [[sys.executable, "-m", "qradaptor", "search", str(model), "-o", str(work / f"shared-{i}"),
              "--storage", url, "--workers", "1", *map(str, s)] for i in range(2)]  # fmt: skip
    procs = [
        subprocess.Popen(a, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argv2
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    codes = sorted(p.returncode for p in procs)
    refused = [
        err.strip().splitlines()[-1] for (_, err), p in zip(outs, procs, strict=True) if p.returncode == 2
    ]
    trials = complete_trials(work / "shared.db")
    repeated = len(trials) - len({(st, h) for st, _, h in trials})
    said = refused[0][:140] if refused else "-"
    rows.append(("two `qra search --storage URL` on one study", f"{repeated} trials repeated",
                 f"exit codes {codes}; the refused one said: {said}"))  # fmt: skip
    return rows


def _trial_losses(run: Path) -> list[tuple[str, float]]:
    return [
        (r["plan_hash"], r["loss"]) for r in map(json.loads, (run / "trials.jsonl").read_text().splitlines())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="a scratch folder (created)")
    parser.add_argument("--only", choices=("bad", "faults"), help="run one part")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = tiny_model(args.out / "tiny-llama")
    files = data_files(args.out)
    started = time.perf_counter()
    if args.only != "faults":
        rows = bad_inputs(args.out, model, files)
        verbs: dict[str, list[int]] = {}
        for verb, _, passed, _ in rows:
            verbs.setdefault(verb, [0, 0])
            verbs[verb][0] += passed
            verbs[verb][1] += 1
        print("| verb | bad-input classes tried | one clear line, exit 2 |\n|---|---|---|")
        for verb, (ok, total) in verbs.items():
            classes = sorted({cls for v, cls, _, _ in rows if v == verb})
            print(f"| {verb} | {'; '.join(classes)} | {ok}/{total} |")
        print(f"| **all** | | **{sum(r[2] for r in rows)}/{len(rows)}** |\n")
        failed = [r for r in rows if not r[2]]
        for verb, cls, _, line in failed:
            print(f"- FAIL {verb} / {cls}: {line}")
    if args.only != "bad":
        print("| fault | lost / repeated | outcome |\n|---|---|---|")
        for row in faults(args.out, model, files):
            print("| " + " | ".join(row) + " |")
    print(f"\n{time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
