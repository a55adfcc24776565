"""Batched greedy generation that stops at strings, the way lm-eval's ``generate_until`` does.

The harness (``lm_eval/models/huggingface.py``) sorts requests by length, left-pads each
batch, runs ``model.generate(do_sample=False)`` with a stopping criterion on the stop
strings, decodes the new tokens with special tokens skipped and then cuts the text at every
stop string in turn (``postprocess_generated_text``). ``greedy_generate`` follows the same
steps, so a generation here is the text the harness would score. Text after an eos token is
dropped (the harness gets the same by adding the decoded eos to its stop strings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qradaptor.eval.loglik import inference, model_device

if TYPE_CHECKING:
    import torch


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """Cut ``text`` before the first occurrence of each stop string, applied in turn.

    This is lm-eval's ``postprocess_generated_text``: ``text = text.split(stop)[0]`` for
    every non-empty stop, which leaves the text before the earliest stop string.

    Args:
        text: A decoded generation.
        until: Stop strings; empty strings are ignored.

    Returns:
        The text before the earliest stop string (all of it when none occurs).
    """
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def _stop_criterion(tokenizer: Any, until: Sequence[str], prompt_len: int) -> Any:
    """A ``StoppingCriteria`` marking a row done once its new text contains a stop string.

    Only the tail of each row is decoded: a stop string of ``k`` UTF-8 bytes spans at most
    ``k`` tokens (every token covers at least one byte), so ``k + 1`` tokens always hold it.
    Rows are returned as a per-row bool tensor, so ``generate`` pads finished rows and ends
    the batch when every row is done.
    """
    import torch
    from transformers import StoppingCriteria

    stops = [s for s in until if s]
    lookback = max((len(s.encode("utf-8")) for s in stops), default=0) + 1

    class StopOnStrings(StoppingCriteria):
        def __init__(self) -> None:
            self.done: torch.Tensor | None = None

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            # input_ids: (B, prompt_len + generated so far)
            if self.done is None:
                self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            tails = input_ids[:, max(prompt_len, input_ids.shape[1] - lookback) :]
            texts = tokenizer.batch_decode(tails, skip_special_tokens=True)
            hit = torch.tensor([any(s in t for s in stops) for t in texts], device=input_ids.device)
            self.done = self.done | hit
            return self.done

    return StopOnStrings()


def greedy_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    until: Sequence[str],
    batch_size: int = 8,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of ``prompts``, each cut at its first stop string or eos.

    Prompts are sorted by token length (longest first, as the harness does) and generated
    in left-padded batches with an attention mask; results come back in input order. A
    batch ends early once every row has produced a stop string.

    Args:
        model: A causal LM (``PreTrainedModel`` or ``PeftModel``) with ``generate``.
        tokenizer: Its tokenizer. When it has no pad token, eos is used for padding.
        prompts: The prompts, tokenized with the tokenizer's default special tokens.
        max_new_tokens: Most tokens generated per prompt (the harness's ``max_gen_toks``).
        until: Stop strings; the returned text ends before the first one.
        batch_size: Prompts per ``generate`` call.
        progress: Show progress over batches: a bar on a terminal, lines in a log.

    Returns:
        One generation per prompt (new text only), in the order of ``prompts``.

    Raises:
        ValueError: If ``max_new_tokens`` or ``batch_size`` is below 1, or the tokenizer has
            neither a pad nor an eos token.
    """
    from transformers import StoppingCriteriaList

    from qradaptor.progress import progress_bar

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    if pad_id is None:
        raise ValueError("tokenizer must have a pad or an eos token for batched generation, got neither")
    if not prompts:
        return []

    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    device = model_device(model)
    results: list[str] = [""] * len(prompts)

    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        starts = range(0, len(order), batch_size)
        bar = progress_bar(total=len(starts), desc="generate", unit="batch", enabled=progress)
        for start in starts:
            idx = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True)
            input_ids = enc["input_ids"].to(device)  # (B, T), left-padded
            attention_mask = enc["attention_mask"].to(device)
            prompt_len = input_ids.shape[1]
            with inference(model):
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad_id,
                    eos_token_id=eos_id,
                    stopping_criteria=StoppingCriteriaList([_stop_criterion(tokenizer, until, prompt_len)]),
                )
            for row, i in enumerate(idx):
                new = out[row, prompt_len:].tolist()
                if eos_id is not None and eos_id in new:
                    new = new[: new.index(eos_id)]
                text = tokenizer.decode(new, skip_special_tokens=True)
                results[i] = cut_at_stops(text, until)
            bar.update()
    finally:
        tokenizer.padding_side, tokenizer.pad_token = old_side, old_pad
        if "bar" in locals():
            bar.close()
    return results
