"""Tests for qradaptor.data.instructions."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import pytest
import torch

from qradaptor.data.instructions import (
    IGNORE_INDEX,
    InstructionExample,
    collate_instructions,
    format_prompt,
    pad_token_id,
    tokenize_instruction,
)

EXAMPLE = InstructionExample(
    instruction="Answer the question.", input="What is a wetland?", output="A wet area, mostly."
)


def test_example_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EXAMPLE.output = "x"  # type: ignore[misc]


def test_prompt_template_with_and_without_input() -> None:
    assert format_prompt(EXAMPLE).endswith(
        "### Instruction:\nAnswer the question.\n\n### Input:\nWhat is a wetland?\n\n### Response:\n"
    )
    no_input = dataclasses.replace(EXAMPLE, input="  ")
    prompt = format_prompt(no_input)
    assert "### Input:" not in prompt
    assert prompt.startswith("Below is an instruction that describes a task. Write")
    assert prompt.endswith("### Instruction:\nAnswer the question.\n\n### Response:\n")


def test_labels_mask_exactly_the_prompt(tiny_tokenizer: Any) -> None:
    ids, labels = tokenize_instruction(EXAMPLE, tiny_tokenizer, max_len=512)
    n_prompt = len(tiny_tokenizer(format_prompt(EXAMPLE))["input_ids"])
    assert len(ids) == len(labels)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert IGNORE_INDEX not in labels[n_prompt:]
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(labels[n_prompt:-1]) == EXAMPLE.output
    assert tiny_tokenizer.decode(ids[:n_prompt]) == format_prompt(EXAMPLE)


def test_long_prompt_is_cut_from_the_left_and_keeps_the_response(tiny_tokenizer: Any) -> None:
    long = dataclasses.replace(EXAMPLE, input="word " * 300 + "What is a wetland?")
    full_ids, _ = tokenize_instruction(long, tiny_tokenizer, max_len=10_000)
    ids, labels = tokenize_instruction(long, tiny_tokenizer, max_len=64)
    response = [t for t in labels if t != IGNORE_INDEX]
    assert len(ids) == 64
    assert tiny_tokenizer.decode(response[:-1]) == EXAMPLE.output
    assert ids == full_ids[-64:]  # the tail of the sequence is kept whole


def test_long_response_is_cut_from_the_right(tiny_tokenizer: Any) -> None:
    long = dataclasses.replace(EXAMPLE, output="yes " * 400)
    n_prompt = len(tiny_tokenizer(format_prompt(long))["input_ids"])
    max_len = 3 * n_prompt
    ids, labels = tokenize_instruction(long, tiny_tokenizer, max_len=max_len)
    assert len(ids) == max_len
    assert labels.count(IGNORE_INDEX) == n_prompt  # prompt is short: kept whole
    assert ids[-1] != tiny_tokenizer.eos_token_id


def test_max_len_too_small(tiny_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="max_len must be >= 2, got 1"):
        tokenize_instruction(EXAMPLE, tiny_tokenizer, max_len=1)


def test_collate_pads_right(tiny_tokenizer: Any) -> None:
    short = dataclasses.replace(EXAMPLE, input="", output="No.")
    batch = [tokenize_instruction(e, tiny_tokenizer, 512) for e in (EXAMPLE, short)]
    out = collate_instructions(batch, pad_id=pad_token_id(tiny_tokenizer))
    long_len, short_len = len(batch[0][0]), len(batch[1][0])
    assert long_len > short_len
    assert out["input_ids"].shape == out["labels"].shape == (2, long_len)
    assert out["attention_mask"][1].tolist() == [1] * short_len + [0] * (long_len - short_len)
    assert out["input_ids"][1, short_len:].eq(tiny_tokenizer.pad_token_id).all()
    assert out["labels"][1, short_len:].eq(IGNORE_INDEX).all()
    assert out["input_ids"][0].tolist() == batch[0][0]
    assert out["labels"].dtype == torch.long


def test_collate_works_as_a_dataloader_collate(tokenizer_without_pad: Any) -> None:
    from torch.utils.data import DataLoader

    pad = pad_token_id(tokenizer_without_pad)
    assert pad == tokenizer_without_pad.eos_token_id
    items = [tokenize_instruction(EXAMPLE, tokenizer_without_pad, 512)] * 3
    loader = DataLoader(items, batch_size=2, collate_fn=partial(collate_instructions, pad_id=pad))
    sizes = [b["input_ids"].shape[0] for b in loader]
    assert sizes == [2, 1]


def test_collate_errors() -> None:
    with pytest.raises(ValueError, match="at least one example"):
        collate_instructions([], pad_id=0)
    with pytest.raises(ValueError, match=r"batch\[0\].*got 3 and 2"):
        collate_instructions([([1, 2, 3], [1, 2])], pad_id=0)


def test_pad_token_id_needs_pad_or_eos() -> None:
    class Bare:
        pad_token_id = None
        eos_token_id = None

    with pytest.raises(ValueError, match="pad_token_id or eos_token_id"):
        pad_token_id(Bare())
