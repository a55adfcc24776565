"""``qra search`` on the tiny Llama saved to disk: the run folder, resuming, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qradaptor.plan import Plan

FAST = ["--seq-len", 16, "--steps", 2, "--batch-size", 2, "--eval-batches", 1, "--calibration-samples", 2]
SMALL = ["--population", 3, "--generations", 2, "--bayes-iterations", 2, "--group-size", 32, "--ranks", "4,8"]
PAPER = ["--strategy", "paper"]


pytestmark = pytest.mark.usefixtures("one_thread")


def search(cli, tiny_model_dir, words, out: Path, *extra: object) -> tuple[int, str, str]:
    data = ["--data", words, "--eval-data", words]
    strategy = [] if "--strategy" in extra else PAPER  # these tests are of the paper's pipeline
    return cli(
        "search", tiny_model_dir, "--budget", "3.6bits", "-o", out, *data, *FAST, *SMALL, *strategy, *extra
    )


def cost_line(err: str) -> str:
    """The line a search prints before it starts: what it will do and about how long."""
    return next(line for line in err.splitlines() if line.startswith("qra search: this search: "))


def trials_of(run: Path) -> list[dict]:
    """The run's trials.jsonl, one dict per scored plan."""
    return [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]


def test_help_names_the_budget_forms_and_the_ablations(cli) -> None:
    code, out, _ = cli("search", "--help")
    assert code == 0
    for option in [
        "--budget",
        "--bits",
        "--ranks",
        "--granularity",
        "--no-profile",
        "--fixed-bits",
        "--fixed-rank",
    ]:
        assert option in out, option
    assert "--bayes-iterations" in out and "resumes the search" in out


def test_a_search_writes_its_run_folder_and_a_second_run_resumes_it(
    cli, tiny_model_dir, words, tmp_path
) -> None:
    out = tmp_path / "run"
    code, stdout, err = search(cli, tiny_model_dir, words, out)
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    expected = {
        "config.json",
        "study.db",
        "plan.json",
        "trials.csv",
        "trials.jsonl",
        "pareto.json",
        "summary.json",
    }
    plots = {"pareto.png", "plan_by_depth.png", "progress.png", "bits_vs_sensitivity.png", "sensitivity.png"}
    assert expected | plots | {"sensitivity.json", "sensitivity.csv"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    plan = Plan.from_json((out / "plan.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    trials = trials_of(out)
    chosen = summary["chosen"]
    assert plan.plan_hash == chosen["plan_hash"] and chosen["avg_bits"] <= 3.6
    assert chosen["loss"] == min(t["loss"] for t in trials if t["avg_bits"] <= 3.6)
    assert summary["evaluated_this_run"] == len(trials) and summary["replayed_from_study"] == 0
    assert summary["search_cost_epochs"] == pytest.approx(
        sum(t["tokens"] for t in trials if t["phase"] != "reference") / summary["epoch_tokens"]
    )
    assert -1.0 <= summary["bits_sensitivity_pearson"] <= 1.0 or summary["bits_sensitivity_pearson"] is None
    assert "chosen plan: proxy loss" in stdout and f"qra eval --plan {out / 'plan.json'}" in stdout

    code, stdout, err = search(cli, tiny_model_dir, words, out)
    assert code == 0, err
    again = json.loads((out / "summary.json").read_text())
    assert again["evaluated_this_run"] == 0 and again["replayed_from_study"] == len(trials)
    assert again["chosen"] == chosen
    assert f"0 plans scored, {len(trials)} read from the study" in stdout

    # The chosen plan goes straight into qra memory (and qra eval / train).
    code, stdout, err = cli("memory", tiny_model_dir, "--plan", out / "plan.json")
    assert code == 0, err


def test_steps_0_is_a_search_of_forward_passes_only(cli, tiny_model_dir, words, tmp_path) -> None:
    # The screen is the top rung: every plan, the Bayes picks too, is scored by its held-out loss
    # before any tuning; the choice is the lowest of them, never worse than the knapsack plan.
    out = tmp_path / "run"
    settings = ["--strategy", "halving", "--candidates", 9, "--steps", 0, "--bayes-iterations", 1]
    code, stdout, err = search(cli, tiny_model_dir, words, out, *settings)
    assert code == 0, err
    cost = cost_line(err)
    assert "9 plans screened forward only, 1 Bayesian pick scored forward only" in cost
    assert "proxy fine-tune" not in cost
    trials = trials_of(out)
    summary = json.loads((out / "summary.json").read_text())
    assert {t["phase"] for t in trials} == {"knapsack", "screen", "bayes"}
    assert len({t["plan_hash"] for t in trials}) == len(trials)  # at one rank, 4 plans of 3 blocks
    assert all(t["tokens"] == 0 and t["loss"] == t["loss_before"] for t in trials)
    knapsack = next(t for t in trials if t["phase"] == "knapsack")
    assert summary["chosen"]["loss"] == min(t["loss"] for t in trials) <= knapsack["loss"]
    assert json.loads((out / "config.json").read_text())["proxy"]["steps"] == 0
    # Forward only, every adapter starts at zero: ranks are not searched but held at the largest.
    assert "ranks cannot be told apart: every block gets rank 8 (the largest --ranks choice" in err
    assert all(set(t["ranks"]) == {8} for t in trials)


def test_steps_0_takes_a_fixed_rank_and_refuses_fixed_bits(cli, tiny_model_dir, words, tmp_path) -> None:
    forward_only = ["--strategy", "halving", "--candidates", 3, "--steps", 0, "--bayes-iterations", 0]
    code, _, err = search(cli, tiny_model_dir, words, tmp_path / "r4", *forward_only, "--fixed-rank", 4)
    assert code == 0, err
    trials = trials_of(tmp_path / "r4")
    assert all(set(t["ranks"]) == {4} for t in trials) and "cannot be told apart" not in err
    code, _, err = search(cli, tiny_model_dir, words, tmp_path / "fb", *forward_only, "--fixed-bits", 4)
    assert code == 2 and "--steps 0 with --fixed-bits 4 leaves nothing to score" in err
    assert not (tmp_path / "fb").exists()


def test_the_halving_strategy_writes_its_rungs_and_resumes(cli, tiny_model_dir, words, tmp_path) -> None:
    from qradaptor.search.records import records_from_csv

    out = tmp_path / "run"
    halving = ["--strategy", "halving", "--candidates", 9, "--rungs", 1, "--eta", 3]
    code, stdout, err = search(cli, tiny_model_dir, words, out, *halving)
    assert code == 0, err
    cost = cost_line(err)
    assert (
        "9 plans screened forward only, 4 proxy fine-tunes of 2 steps" in cost
        and "min on this device" in cost
    )
    summary = json.loads((out / "summary.json").read_text())
    trials = trials_of(out)
    screened = records_from_csv((out / "screened.csv").read_text())
    assert summary["strategy"] == "halving" and summary["screened"] == {"rung0": 9}
    assert [r.phase for r in screened] == ["knapsack"] + ["screen"] * 8
    assert all(r.tokens == 0 for r in screened)  # forward only
    top = [t for t in trials if t["phase"] != "reference"]
    knapsack = [t for t in top if t["phase"] == "knapsack"]
    assert len(knapsack) == 1 and summary["chosen"]["loss"] <= knapsack[0]["loss"]
    # The top rung: the 3 best of the screen (a third of 9; one may be a reference plan, scored
    # there already) and the knapsack plan, then Bayes.
    best3 = {r.plan_hash for r in sorted(screened, key=lambda r: r.loss)[:3]} | {screened[0].plan_hash}
    assert {t["plan_hash"] for t in top if t["phase"] in ("knapsack", "halving")} <= best3
    assert best3 <= {t["plan_hash"] for t in trials}
    assert summary["evaluated_this_run"] == len(trials) + len(screened)
    assert f"({len(screened)} on lower rungs)" in stdout
    # Where the choice stands against the knapsack plan, which this search always scores.
    chosen, (plain,) = summary["chosen"], knapsack
    if chosen["plan_hash"] == plain["plan_hash"]:
        assert "the chosen plan is the knapsack plan (qra plan --baseline knapsack)" in stdout
    else:
        gain = (plain["loss"] - chosen["loss"]) / plain["loss"]
        said = f"the knapsack plan scored {plain['loss']:.4f}: the chosen plan ({chosen['phase']})"
        assert f"{said} is {gain:.2%} lower" in stdout

    code, stdout, err = search(cli, tiny_model_dir, words, out, *halving)
    again = json.loads((out / "summary.json").read_text())
    assert code == 0 and again["evaluated_this_run"] == 0 and again["chosen"] == summary["chosen"]


def test_strategies_agree_with_the_library() -> None:
    from qradaptor.cli.search import STRATEGIES
    from qradaptor.search.definition import STRATEGIES as LIBRARY

    assert STRATEGIES == LIBRARY


def test_forward_only_under_a_byte_budget_holds_the_smallest_rank(
    cli, tiny_model_dir, words, tmp_path
) -> None:
    """Under a byte budget the rank --steps 0 fixes also sets the bytes left for bits: bits first."""
    settings = ["--strategy", "halving", "--candidates", 3, "--steps", 0, "--bayes-iterations", 0]
    code, _, err = search(cli, tiny_model_dir, words, tmp_path / "run", *settings, "--budget", "200KiB")
    assert code == 0, err
    assert "every block gets rank 4 (the smallest --ranks choice: under a byte budget" in err
    assert "bits come first, as in `qra plan --baseline knapsack`" in err
    assert all(set(t["ranks"]) == {4} for t in trials_of(tmp_path / "run"))


def test_the_ablations_search_what_they_say(cli, tiny_model_dir, words, tmp_path) -> None:
    code, _, err = search(
        cli,
        tiny_model_dir,
        words,
        tmp_path / "b",
        "--fixed-rank",
        8,
        "--no-profile",
        "--budget",
        "4.2bits",
    )
    assert code == 0, err
    trials = trials_of(tmp_path / "b")
    assert all(set(t["ranks"]) == {8} for t in trials)
    assert not (tmp_path / "b" / "sensitivity.json").exists()
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["evaluations"]["bayes"] == 2 and "bits_sensitivity_pearson" not in summary

    code, _, err = search(
        cli,
        tiny_model_dir,
        words,
        tmp_path / "r",
        "--fixed-bits",
        4,
        "--budget",
        "200KiB",
        "--bayes-iterations",
        0,
    )
    assert code == 0, err
    trials = trials_of(tmp_path / "r")
    assert all(set(t["bits"]) == {4} for t in trials)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["evaluations"]["bayes"] == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bits", ""], "--bits must list at least one value"),
        (["--bits", "2,x"], "--bits must be integers separated by commas"),
        (["--bits", "2,9"], "every value of --bits"),
        (["--ranks", "-4"], "every value of --ranks"),
        (["--budget", "3.5parsecs"], "budget unit 'parsecs' is unknown"),
        (["--budget", "4bit"], "write average stored bits per weight as '4bits'"),
        (["--method", "rtn"], "--method is now --quant-method here"),
        (["--budget", "2.5bits"], "below the smallest plan of the search space: 3 avg bits"),
        (["--fixed-bits", "4", "--fixed-rank", "8"], "give at most one of --fixed-bits and --fixed-rank"),
        (["--fixed-bits", "4"], "with a budget in bits (3.6bits) leaves nothing to search"),
        (["--steps", "-1"], "--steps must be >= 0 (0: plans scored forward only), got -1"),
        (["--strategy", "halving", "--rungs", "0"], "--steps 0 and --rungs 0 go together"),  # FAST: --steps 2
        (
            ["--strategy", "halving", "--steps", "0", "--rungs", "2"],
            "got --steps 0 --rungs 2: give one of them, or both as 0",
        ),
        (["--steps", "0", "--strategy", "paper"], "is for --strategy halving, got --strategy paper"),
        (
            ["--quant-method", "symmetric", "--double-quant"],
            "--quant-method symmetric stores one float16 scale per group and no zero",
        ),
        (["--quant-method", "symmetric", "--bits", "1,4"], "--quant-method symmetric needs bits >= 2"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_study(
    cli, tiny_model_dir, words, tmp_path, extra, message
) -> None:
    code, _, err = search(cli, tiny_model_dir, words, tmp_path / "run", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "study.db").exists()


def test_a_profile_of_other_scales_is_refused_before_the_model_loads(
    cli, tiny_model_dir, words, tmp_path
) -> None:
    settings = ["--bits", "2,3,4,8", "--samples", "2", "--seq-len", "8", "--group-size", "32"]
    code, _, err = cli(
        "profile", tiny_model_dir, "--data", words, *settings, "--device", "cpu", "-o", tmp_path / "p"
    )
    assert code == 0, err
    table = tmp_path / "p" / "sensitivity.json"
    code, _, err = search(
        cli, tiny_model_dir, words, tmp_path / "run", "--double-quant", "--sensitivity", table
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "measured without 8-bit scales and zeros (double quantisation), the search quantises with" in err
    assert not (tmp_path / "run").exists()  # refused before the lock, the study and config.json


def test_resuming_with_another_space_is_refused_and_the_study_is_kept(
    cli, tiny_model_dir, words, tmp_path
) -> None:
    out = tmp_path / "run"
    assert search(cli, tiny_model_dir, words, out, "--generations", 0, "--bayes-iterations", 0)[0] == 0
    before = (out / "study.db").read_bytes()
    code, _, err = search(cli, tiny_model_dir, words, out, "--bits", "2,3,4")
    assert code == 2 and "bits: study has [2, 3, 4, 8], this run has [2, 3, 4]" in err
    assert (out / "study.db").read_bytes() == before


def test_a_budget_above_the_largest_plan_returns_it_and_says_so(cli, tiny_model_dir, words, tmp_path) -> None:
    code, stdout, err = search(cli, tiny_model_dir, words, tmp_path / "run", "--budget", "16bits")
    assert code == 0, err
    assert "above the largest plan of the search space" in stdout
    lines = err.splitlines()
    said = next(i for i, line in enumerate(lines) if "affords the largest plan of the search space" in line)
    assert said < next(i for i, line in enumerate(lines) if "this search:" in line)  # before the model load
    plan = Plan.from_json((tmp_path / "run" / "plan.json").read_text())
    assert set(plan.block_bits()) == {8} and set(plan.block_ranks()) == {8}


def test_an_output_that_is_a_file_is_refused(cli, tiny_model_dir, words, tmp_path) -> None:
    target = tmp_path / "file"
    target.write_text("keep")
    code, _, err = search(cli, tiny_model_dir, words, target)
    assert code == 2 and "is a file" in err and target.read_text() == "keep"


def test_more_workers_than_memory_allows_are_refused_with_the_numbers(
    cli, tiny_model_dir, words, tmp_path
) -> None:
    out = tmp_path / "run"
    code, _, err = search(cli, tiny_model_dir, words, out, "--workers", 10**7, "--device", "cpu")
    assert code == 2
    assert "10000000 workers on cpu need about" in err and "MiB each, predicted" in err and "at most" in err
    assert not out.exists()  # refused before the run folder or the study was written


def test_workers_options_are_checked(cli, tiny_model_dir, words, tmp_path) -> None:
    code, _, err = search(cli, tiny_model_dir, words, tmp_path / "a", "--workers", -1)
    assert code == 2 and "--workers must be >= 0, got -1" in err
    code, _, err = search(cli, tiny_model_dir, words, tmp_path / "b", "--gpus", "0")
    assert code == 2 and "--gpus places local workers: give --workers N too" in err
    code, _, err = search(
        cli, tiny_model_dir, words, tmp_path / "c", "--workers", 2, "--gpus", "0", "--device", "cpu"
    )
    assert code == 2 and "--gpus 0 was given but the device is cpu" in err
    code, _, err = search(cli, tiny_model_dir, words, tmp_path / "d", "--storage", "mysql-ish:/nowhere")
    assert code == 2 and "is not a database URL" in err
    unreachable = "postgresql+psycopg2://me:secret@127.0.0.1:1/db"
    code, _, err = search(cli, tiny_model_dir, words, tmp_path / "e", "--storage", unreachable)
    assert code == 2 and "cannot open storage 'postgresql+psycopg2://me:***@127.0.0.1:1/db'" in err
    assert not (tmp_path / "e").exists()


def test_the_preset_sizes_what_is_not_given(cli, tiny_model_dir, words, tmp_path) -> None:
    """quick on the CPU (auto), its sizes for every option left out; a given option wins."""
    from qradaptor.cli.search import PRESETS

    out = tmp_path / "run"
    data = ["--data", words, "--eval-data", words, "--group-size", 32, "--ranks", "4,8"]
    given = ["--seq-len", 16, "--steps", 2, "--calibration-samples", 2, "--bayes-iterations", 0]
    code, _, err = cli(
        "search", tiny_model_dir, "--budget", "3.6bits", "-o", out, *data, *given, "--device", "cpu"
    )
    assert code == 0, err
    settings = json.loads((out / "config.json").read_text())
    quick = PRESETS["quick"]
    assert settings["preset"] == "quick"
    assert settings["proxy"]["steps"] == 2 and settings["proxy"]["batch_size"] == quick["batch_size"]
    halving = settings["config"]["halving"]
    assert (halving["candidates"], halving["rungs"]) == (quick["candidates"], quick["rungs"])
    assert settings["config"]["bayes"]["iterations"] == 0
    code, _, err = cli("search", tiny_model_dir, "--budget", "3.6bits", "-o", out, "--preset", "fast")
    assert code == 2 and "--preset: invalid choice: 'fast'" in err and "'quick', 'full'" in err


def test_without_eval_data_plans_are_scored_on_a_held_out_part_of_the_users_data(
    cli, tiny_model_dir, words, tmp_path, monkeypatch
) -> None:
    import qradaptor.data
    from qradaptor.data.roles import texts_in_role

    packed: list[list[str]] = []
    real_pack = qradaptor.data.pack_texts

    class Packed(Exception):
        pass

    def recording_pack(texts, *args, **kwargs):
        packed.append(list(texts))
        if len(packed) == 2:  # the calibration, then the selection windows: enough seen
            raise Packed
        return real_pack(texts, *args, **kwargs)

    monkeypatch.setattr(qradaptor.data, "pack_texts", recording_pack)
    docs = words.read_text(encoding="utf-8").split("\n\n")
    with pytest.raises(Packed):
        cli("search", tiny_model_dir, "--budget", "3.6bits", "-o", tmp_path / "run", "--data", words, *FAST)
    calibration, selection = packed
    assert selection == texts_in_role(docs, "selection") and selection
    assert sorted(calibration + selection) == sorted(docs)


def test_a_corpus_too_small_to_hold_out_from_is_refused_before_the_model_loads(
    cli, tiny_model_dir, tmp_path
) -> None:
    one = tmp_path / "one.txt"
    one.write_text("a b c a b c", encoding="utf-8")
    code, _, err = cli("search", tiny_model_dir, "--budget", "3.6bits", "-o", tmp_path / "run", "--data", one)
    assert code == 2 and "has 1 document(s)" in err and "--eval-data" in err
    assert not (tmp_path / "run").exists()


def test_search_defaults_are_the_library_defaults() -> None:
    """qra search's defaults (parser and --preset full) equal its configs' dataclass defaults."""
    from qradaptor.cli import build_parser
    from qradaptor.cli.common import VERB_DEST
    from qradaptor.cli.search import PRESETS, SEARCH_BITS_TEXT
    from qradaptor.export.serve_targets import quantiser
    from qradaptor.search.bayes import BayesConfig
    from qradaptor.search.multifidelity import HalvingConfig
    from qradaptor.search.pipeline import SearchConfig
    from qradaptor.search.proxy import ProxyConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == VERB_DEST).choices["search"]
    given = {a.dest: a.default for a in sub._actions if a.option_strings}
    config, proxy, halving, bayes = SearchConfig(budget=None), ProxyConfig(), HalvingConfig(), BayesConfig()
    for name in ("strategy", "granularity", "population", "generations", "seed"):
        assert given[name] == getattr(config, name), name
    # None: not given, so --serve llama.cpp can pick its own; otherwise the config's
    assert given["group_size"] is None and given["quant_method"] is None
    assert quantiser(None, None, None) == (config.group_size, config.quant_method)
    assert given["bits"] is None  # SEARCH_BITS_TEXT, or 4,8,16 with --serve vllm
    assert tuple(int(b) for b in SEARCH_BITS_TEXT.split(",")) == config.bits
    assert tuple(int(r) for r in given["ranks"].split(",")) == config.ranks
    assert given["lr"] == proxy.lr and given["eta"] == halving.eta
    full = PRESETS["full"]
    assert (full["steps"], full["batch_size"], full["eval_batches"]) == (
        proxy.steps,
        proxy.batch_size,
        proxy.eval_batches,
    )
    assert (full["candidates"], full["rungs"], full["bayes_iterations"]) == (
        halving.candidates,
        halving.rungs,
        bayes.iterations,
    )
