"""Alpaca-style instruction examples: the record, the prompt, tokenization and padding.

An example is rendered with the Alpaca template (Taori et al., 2023)::

    Below is an instruction that describes a task, paired with an input that provides
    further context. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:
    {input}

    ### Response:
    {output}<eos>

(without the ``### Input:`` block and with "describes a task." when ``input`` is
empty). The loss is taken on the response only: prompt positions get label ``-100``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
"""Label value skipped by ``torch.nn.functional.cross_entropy``."""

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
"""Alpaca prompt for examples with a non-empty ``input``."""

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
"""Alpaca prompt for examples with an empty ``input``."""


@dataclass(frozen=True)
class InstructionExample:
    """One instruction-tuning example in Alpaca form."""

    instruction: str
    """What to do, e.g. "Answer the question using a span of the passage."."""
    input: str
    """Context for the instruction (passage, question, options); may be empty."""
    output: str
    """The target response; the only part that is trained on."""
    source: str = ""
    """Where the example came from (e.g. ``"squad"``); informational only."""


def format_prompt(example: InstructionExample) -> str:
    """Render the Alpaca prompt (everything before the response) for ``example``."""
    if example.input.strip():
        return PROMPT_WITH_INPUT.format(instruction=example.instruction, input=example.input)
    return PROMPT_NO_INPUT.format(instruction=example.instruction)


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its eos token.

    Raises:
        ValueError: If the tokenizer has neither a pad nor an eos token.
    """
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(
        f"tokenizer must define pad_token_id or eos_token_id, got neither on {type(tokenizer).__name__}"
    )


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(
            f"tokenizer must define eos_token_id (it ends every response), got None on "
            f"{type(tokenizer).__name__}"
        )
    return int(eos)


def tokenize_instruction(
    example: InstructionExample, tokenizer: Any, max_len: int
) -> tuple[list[int], list[int]]:
    """Tokenize one example into ``input_ids`` and response-only ``labels``.

    The prompt is tokenized with the tokenizer's special tokens (e.g. BOS), the
    response without them, followed by eos. Labels equal ``input_ids`` on the response
    and ``-100`` on the prompt. Prompt and response are tokenized separately so the
    boundary is exact.

    Over-long examples (more than ``max_len`` tokens) are cut so that the response
    keeps at least ``min(len(response), max_len // 2)`` tokens: the response is cut
    from the right, then the prompt from the left (its end, which holds the question
    and ``### Response:``, is what the model needs).

    Args:
        example: The example to tokenize.
        tokenizer: A Hugging Face tokenizer with an eos token.
        max_len: Maximum number of tokens, at least 2.

    Returns:
        ``(input_ids, labels)``, two lists of the same length ``<= max_len``.

    Raises:
        ValueError: If ``max_len < 2`` or the tokenizer has no eos token.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    eos = _eos_id(tokenizer)
    prompt = list(tokenizer(format_prompt(example), add_special_tokens=True)["input_ids"])
    response = list(tokenizer(example.output, add_special_tokens=False)["input_ids"]) + [eos]
    if len(prompt) + len(response) > max_len:
        response = response[: max(max_len - len(prompt), max_len // 2)]
        prompt = prompt[len(prompt) - (max_len - len(response)) :]
    input_ids = prompt + response
    labels = [IGNORE_INDEX] * len(prompt) + response
    return input_ids, labels


def collate_instructions(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of ``tokenize_instruction`` outputs into tensors.

    Use with a DataLoader as ``functools.partial(collate_instructions,
    pad_id=pad_token_id(tokenizer))``.

    Args:
        batch: ``(input_ids, labels)`` pairs of equal length within each pair.
        pad_id: Token id written into padded positions.

    Returns:
        ``input_ids`` (B, T) padded with ``pad_id``, ``labels`` (B, T) padded with
        ``-100`` and ``attention_mask`` (B, T), 1 on real tokens, where T is the
        longest sequence of the batch.

    Raises:
        ValueError: If ``batch`` is empty or a pair has unequal lengths.
    """
    import torch

    if not batch:
        raise ValueError("batch must contain at least one example, got an empty list")
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        if len(ids) != len(lab):
            raise ValueError(
                f"batch[{i}] must have len(input_ids) == len(labels), got {len(ids)} and {len(lab)}"
            )
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
