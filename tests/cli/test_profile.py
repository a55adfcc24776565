"""``qra profile``, run in-process on the tiny Llama saved to disk, checked against the library."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from qradaptor.cli import profile as profile_verb
from qradaptor.data import load_texts, pack_texts
from qradaptor.models.loading import load_model
from qradaptor.sensitivity import profile_sensitivity
from qradaptor.sensitivity_table import SensitivityTable


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .txt corpus of the word tokenizer's words: 12 documents of 30 words, blank-line separated."""
    rng = random.Random(0)
    docs = [" ".join(rng.choice("abc") for _ in range(30)) for _ in range(12)]
    path = tmp_path_factory.mktemp("data") / "words.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path


def _library_table(folder: Path, data: str | None) -> SensitivityTable:
    """What the library gives for the settings of the test below, called directly."""
    loaded = load_model(folder, dtype=torch.float32, device="cpu")
    ids = pack_texts(load_texts(data), loaded.tokenizer, 8, num_sequences=3, seed=0)  # (N, T)
    return profile_sensitivity(
        loaded.model, ids, bits=[2, 4], group_size=32, quant_method="rtn", batch_size=2, progress=False
    )


def test_help_lists_the_options(cli) -> None:
    code, out, _ = cli("--help")
    assert code == 0 and "profile" in out
    code, out, _ = cli("profile", "--help")
    assert code == 0 and "(Eq. 6, §3.3)" in out
    options = "--data --bits --samples --seq-len --batch-size --group-size --quant-method --device --seed"
    for option in [*options.split(), "--force", "-o OUT_DIR"]:
        assert option in out, option
    assert "candidate bit-widths, comma-separated, each 1..8" in out  # the Args: entry of bits


@pytest.mark.parametrize("use_file", [True, False], ids=["txt-file", "embedded-default"])
def test_outputs_equal_the_library_on_the_same_calibration(
    cli, tmp_path, tiny_model_dir, words, use_file
) -> None:
    data = str(words) if use_file else None
    out_dir = tmp_path / "made" / "sens"  # parents are created
    options = ["--data", data] if use_file else []
    settings = "--bits 4,2 --samples 3 --seq-len 8 --batch-size 2 --group-size 32 --quant-method rtn"
    settings += " --device cpu"
    code, out, err = cli("profile", tiny_model_dir, *options, *settings.split(), "-o", out_dir)
    assert code == 0, err
    # Before the work, one line of what it is and its cost here (timing the model does not change it).
    # The cost is timed here, so a busy machine may say more than 1 min.
    announced = "qra profile: this profile: 3 blocks x 2 bit-widths over 3 windows; about "
    assert re.search(re.escape(announced) + r"\d+ min", err), err
    expected = _library_table(tiny_model_dir, data)

    record = json.loads((out_dir / "sensitivity.json").read_text(encoding="utf-8"))
    assert SensitivityTable.from_dict(record) == expected  # the same floats, not merely close
    table_fields = (record["bits"], record["tokens"], record["group_size"], record["quant_method"])
    assert table_fields == ([2, 4], 24, 32, "rtn")
    assert all(v > 0 for row in expected.kl for v in row)  # a real signal, not all zeros
    assert record["model"] == str(Path(tiny_model_dir).resolve()) and record["origin"] == "directory"
    assert record["settings"] == {
        "data": data or "embedded:wiki-calibration",
        "samples": 3,
        "seq_len": 8,
        "seed": 0,
        "batch_size": 2,
        "device": "cpu",
        "dtype": "float32",
    }
    low = expected.column(2)
    assert record["ranks"] == [1 + sum(o > v for o in low) for v in low]
    assert sorted(record["ranks"]) == [1, 2, 3]  # no ties on three distinct floats
    assert (out_dir / "sensitivity.csv").read_text(encoding="utf-8") == expected.to_csv()
    if profile_verb.can_plot():
        assert (out_dir / "sensitivity.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        profile_verb.OUTPUT_FILES if profile_verb.can_plot() else profile_verb.OUTPUT_FILES[:2]
    )  # no temp files left behind

    # The printed table: block, S at each bits (4 significant digits), rank at 2 bits.
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) == 4 and cells[0].isdigit():
            rows[int(cells[0])] = cells[1:]
    assert sorted(rows) == [0, 1, 2]
    for block, (kl2, kl4, rank) in rows.items():
        assert float(kl2) == pytest.approx(expected.kl[block][0], rel=1e-3)
        assert float(kl4) == pytest.approx(expected.kl[block][1], rel=1e-3)
        assert int(rank) == record["ranks"][block]
    top = sorted(range(3), key=lambda b: -low[b])
    assert f"most sensitive at 2 bits: {', '.join(map(str, top))}" in out


def test_without_matplotlib_writes_json_and_csv_and_says_so(
    cli, tmp_path, tiny_model_dir, words, monkeypatch
) -> None:
    monkeypatch.setattr(profile_verb, "can_plot", lambda: False)
    settings = "--bits 3 --samples 1 --seq-len 8 --device cpu".split()
    code, out, err = cli("profile", tiny_model_dir, "--data", words, *settings, "-o", tmp_path)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sensitivity.csv", "sensitivity.json"]
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: matplotlib is not installed, so no sensitivity.png (pip install 'qradaptor[plot]')"
    ]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--bits", "2,x"], "--bits must be integers separated by commas"),
        (["--bits", "9"], "--bits must be bit-widths in 1..8"),
        (["--bits", "0,4"], "--bits must be bit-widths in 1..8"),
        (["--bits", "16"], "--bits must be bit-widths in 1..8"),
        (["--bits", ""], "--bits must name at least one bit-width"),
        (["--bits", " , "], "--bits must be integers separated by commas"),
        (["--bits", "2,4,2"], "--bits must not repeat a bit-width"),
        (["--samples", "0"], "--samples and --seq-len must be >= 1, got 0 and 256"),
        (["--seq-len", "0"], "--samples and --seq-len must be >= 1, got 8 and 0"),
        (["--batch-size", "0"], "--batch-size and --group-size must be >= 1"),
        (["--data", "missing.txt"], "source file 'missing.txt' does not exist"),
        (["--quant-method", "symmetric", "--double-quant"], "symmetric stores one float16 scale per group"),
        (["--quant-method", "symmetric", "--bits", "1,2"], "--quant-method symmetric needs bits >= 2"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    cli, tmp_path, tiny_model_dir, argv, fragment
) -> None:
    out_dir = tmp_path / "out"
    code, out, err = cli("profile", tiny_model_dir, *argv, "-o", out_dir)
    assert code == 2 and out == ""
    assert err.startswith("qra profile: error: ") and err.count("\n") == 1
    assert fragment in err
    assert not out_dir.exists()


def test_out_dir_that_is_a_file_is_refused(cli, tmp_path, tiny_model_dir) -> None:
    target = tmp_path / "taken"
    target.write_text("keep me", encoding="utf-8")
    code, _, err = cli("profile", tiny_model_dir, "-o", target)
    assert code == 2 and err.count("\n") == 1
    assert f"qra profile: error: -o {str(target)!r} is a file" in err
    assert target.read_text(encoding="utf-8") == "keep me"


def test_existing_results_need_force(cli, tmp_path, tiny_model_dir, words) -> None:
    (tmp_path / "sensitivity.csv").write_text("old", encoding="utf-8")
    settings = "--bits 8 --samples 1 --seq-len 4 --device cpu".split()
    argv = ["profile", tiny_model_dir, "--data", words, *settings, "-o", tmp_path]
    code, _, err = cli(*argv)
    assert code == 2 and "already exists; pass --force" in err
    assert not (tmp_path / "sensitivity.json").exists()
    assert (tmp_path / "sensitivity.csv").read_text(encoding="utf-8") == "old"
    code, _, err = cli(*argv, "--force")
    assert code == 0, err
    assert (tmp_path / "sensitivity.csv").read_text(encoding="utf-8").startswith("block,kl_8bit\n")


def test_sensitivity_ranks_share_ties() -> None:
    assert profile_verb.sensitivity_ranks([0.5, 2.0, 0.5, 0.1]) == [2, 1, 2, 4]


def test_progress_lines_reach_a_log_and_no_progress_silences_them(
    cli, tmp_path, tiny_model_dir, words
) -> None:
    settings = "--bits 2 --samples 2 --seq-len 8 --batch-size 2 --group-size 32 --quant-method rtn"
    settings += " --device cpu"
    code, _, err = cli("profile", tiny_model_dir, "--data", words, *settings.split(), "-o", tmp_path / "a")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("sensitivity: ")]
    blocks = 3  # the tiny Llama's, one fit each at one bit-width
    assert lines[0].startswith(f"sensitivity: 0/{blocks} fit") and lines[-1].startswith(
        f"sensitivity: {blocks}/"
    )
    code, _, err = cli(
        "profile", tiny_model_dir, "--data", words, *settings.split(), "-o", tmp_path / "b", "--no-progress"
    )
    assert code == 0 and "sensitivity: " not in err
