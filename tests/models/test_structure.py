from __future__ import annotations

import pytest
from torch import nn

from qradaptor.models.structure import inspect_model, structure_from_config


def test_llama_blocks_and_linears(tiny_llama) -> None:
    s = inspect_model(tiny_llama)
    assert (s.blocks_path, s.num_blocks) == ("model.layers", 3)
    assert s.linear_names == (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
    k = s.linears[1]
    assert (k.in_features, k.out_features, k.kind) == (64, 32, "linear")
    assert s.tied and s.embed_shape == (256, 64) and s.head_path == "lm_head"
    # 3 blocks x 2 norms x 64 + final norm 64
    assert s.other_numel == 3 * 2 * 64 + 64


def test_gpt2_conv1d_found_generically(tiny_gpt2) -> None:
    s = inspect_model(tiny_gpt2)
    assert s.blocks_path == "transformer.h"
    assert [(i.name, i.in_features, i.out_features, i.kind) for i in s.linears] == [
        ("attn.c_attn", 64, 192, "conv1d"),
        ("attn.c_proj", 64, 64, "conv1d"),
        ("mlp.c_fc", 64, 256, "conv1d"),
        ("mlp.c_proj", 256, 64, "conv1d"),
    ]
    total = sum(p.numel() for p in tiny_gpt2.parameters())
    linear = s.num_blocks * sum(i.numel + i.out_features for i in s.linears)
    assert s.other_numel == total - linear - 128 * 64


def test_structure_from_config_matches_built_model(tiny_llama) -> None:
    assert structure_from_config(tiny_llama.config) == inspect_model(tiny_llama)


def test_signature_differs_between_models(tiny_llama, llama_factory) -> None:
    assert inspect_model(tiny_llama).signature != inspect_model(llama_factory(layers=4)).signature


def test_unmappable_model_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(ValueError, match="cannot map model Sequential: found no list of repeated blocks"):
        inspect_model(model)
