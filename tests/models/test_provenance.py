"""Provenance read from the files: GGUF tensor types, safetensors dtypes, and a GGUF's two heads."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from qradaptor.models.gguf_header import read_header, read_tensor
from qradaptor.models.loading import load_config, load_model
from qradaptor.models.provenance import read_provenance


def test_header_walk_matches_gguf_reader(tmp_path: Path, write_gguf) -> None:
    from gguf import GGUFReader

    path = write_gguf(tmp_path / "m.gguf", linear_dtype=np.float16, head="copy")
    header = read_header(path)
    reader = GGUFReader(path)
    assert header.architecture == "llama"
    expected = [(t.name, t.tensor_type.name, tuple(map(int, reversed(t.shape)))) for t in reader.tensors]
    assert [(t.name, t.type_name, t.shape) for t in header.tensors] == expected
    assert [t.offset for t in header.tensors] == [t.data_offset for t in reader.tensors]
    embed = read_tensor(path, header.tensor("token_embd.weight"))
    assert embed.shape == (30, 32) and np.array_equal(embed, reader.tensors[0].data)


def test_a_cut_gguf_is_refused(tmp_path: Path, write_gguf) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.gguf.*cut short"):
        read_provenance(cut)


def test_gguf_types_are_counted_and_a_tied_file_says_so(tmp_path: Path, write_gguf) -> None:
    plain = read_provenance(write_gguf(tmp_path / "plain.gguf"))
    assert plain.format == "gguf" and plain.tensor_types == {"F32": 20}
    assert plain.embeddings == "tied" and plain.heads is None
    assert plain.text == (
        "plain.gguf stores 20 tensors (20 F32); none is quantised; embedding and head tied (one tensor)"
    )

    mixed = read_provenance(write_gguf(tmp_path / "mixed.gguf", linear_dtype=np.float16, head="copy"))
    # 2 blocks x 7 linears in F16; 4 block norms, the final norm and the embedding in F32; the head Q8_0
    assert mixed.tensor_types == {"F16": 14, "F32": 6, "Q8_0": 1}
    assert mixed.text.startswith(
        'mixed.gguf stores 21 tensors (14 F16, 6 F32, 1 Q8_0); its "16-bit" base is these dequantised'
    )


def test_a_tied_model_stored_untied_is_reported_and_tied_on_load(tmp_path, write_gguf, tmp_cache) -> None:
    path = write_gguf(tmp_path / "twice.gguf", head="copy")
    found = read_provenance(path)
    heads = found.heads
    assert heads is not None and (heads.embed_type, heads.head_type) == ("F32", "Q8_0")
    # Q8_0 of N(0, 0.1) weights: about 0.5% relative error, inside the F32 + Q8_0 allowance of ~1.1%
    assert 0.001 < heads.rel_diff < 0.01 < heads.tolerance < 0.012
    assert found.embeddings == "tied on load" and "tied on load" in found.text
    assert found.to_dict()["heads"]["equal"] is True

    assert load_config(path).tie_word_embeddings  # before the cache exists: as load_model will load it
    assert not load_config(write_gguf(tmp_path / "two.gguf", head="other")).tie_word_embeddings
    warned = r"twice\.gguf: embedding \(F32\) and head \(Q8_0\) stored separately"
    with pytest.warns(UserWarning, match=warned):
        loaded = load_model(path)
    model = loaded.model
    assert model.lm_head.weight is model.model.embed_tokens.weight  # one tensor, not two
    stored = torch.tensor(read_tensor(path, read_header(path).tensor("token_embd.weight")))
    assert torch.equal(model.model.embed_tokens.weight, stored)  # the more precise copy (F32) kept
    source = json.loads((Path(loaded.checkpoint) / "qradaptor_source.json").read_text())
    assert source["embeddings"] == "tied on load"


def test_a_different_head_is_kept_with_its_memory(tmp_path: Path, write_gguf, tmp_cache) -> None:
    path = write_gguf(tmp_path / "two.gguf", head="other")
    found = read_provenance(path)
    assert found.embeddings == "untied" and found.heads is not None
    assert found.heads.rel_diff > 1.0  # two unrelated N(0, 0.1) matrices: about sqrt(2)
    assert "kept untied, the head adds 960 parameters (0.0 MiB in 16-bit)" in found.text
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(path).model
    assert [str(w.message) for w in caught if "two.gguf" in str(w.message)] == [f"{path}: {found.heads_note}"]
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def test_a_folder_reports_its_safetensors_dtypes(tmp_path: Path, llama_factory) -> None:
    model = llama_factory(tied=False, layers=2).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "m")
    found = read_provenance(tmp_path / "m")
    # 2 blocks x (7 linears + 2 norms) + embedding + final norm + head
    assert found.format == "safetensors" and found.tensor_types == {"BF16": 21}
    assert found.embeddings == "untied"
    assert found.text == (
        "model.safetensors stores 21 tensors (21 BF16); config.json dtype bfloat16; "
        "embedding and head untied (config.json tie_word_embeddings)"
    )


def test_an_uncached_hub_id_is_unknown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    found = read_provenance("some-org/not-here")
    assert found.format == "unknown" and found.tensor_types == {}
    assert found.text == "hub id some-org/not-here: not in the local cache, its stored dtype is unknown"


@pytest.mark.embedded
def test_the_embedded_gguf_is_mostly_q4_1() -> None:
    found = read_provenance(None)
    assert found.tensor_types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert found.embeddings == "tied"
