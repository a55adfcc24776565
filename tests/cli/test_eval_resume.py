"""``qra eval --resume``: an existing results file is completed with the tasks it lacks, the
tasks it holds are not scored again, and a file scored with other settings or on another
model is refused before anything is scored."""

from __future__ import annotations

import json

import pytest

BASE = ["--plan", "uniform:4:8", "--limit", "2", "--seq-len", "32", "--device", "cpu"]


@pytest.fixture
def wiki_only(cli, tiny_model_dir, tmp_path):
    """A results file holding ppl_wiki alone, as an experiment's eval.json before its tasks grew."""
    out = tmp_path / "eval.json"
    code, _, err = cli("eval", tiny_model_dir, *BASE, "--tasks", "ppl_wiki", "-o", out)
    assert code == 0, err
    return out


def test_resume_scores_only_the_missing_tasks_and_keeps_the_others(cli, tiny_model_dir, tmp_path, wiki_only):
    before = json.loads(wiki_only.read_text())
    code, _, err = cli(
        "eval", tiny_model_dir, *BASE, "--tasks", "ppl_wiki,ppl_lambada", "-o", wiki_only, "--resume"
    )
    assert code == 0, err
    after = json.loads(wiki_only.read_text())
    assert after["meta"]["tasks"] == ["ppl_wiki", "ppl_lambada"]
    assert after["results"][0] == before["results"][0]  # the same record, its seconds included: not re-scored
    fresh = tmp_path / "lambada.json"
    code, _, err = cli("eval", tiny_model_dir, *BASE, "--tasks", "ppl_lambada", "-o", fresh)
    assert code == 0, err
    (lambada,) = json.loads(fresh.read_text())["results"]
    assert [r["task"] for r in after["results"]] == ["ppl_wiki", "ppl_lambada"]
    assert after["results"][1]["value"] == pytest.approx(lambada["value"], rel=1e-6)
    assert after["meta"]["seconds"] >= before["meta"]["seconds"]


def test_resume_with_nothing_missing_writes_nothing(cli, tiny_model_dir, wiki_only):
    text = wiki_only.read_text()
    code, _, err = cli("eval", tiny_model_dir, *BASE, "--tasks", "ppl_wiki", "-o", wiki_only, "--resume")
    assert code == 0 and "nothing to evaluate" in err, err
    assert wiki_only.read_text() == text


def test_resume_without_the_file_evaluates_afresh(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "new.json"
    code, _, err = cli("eval", tiny_model_dir, *BASE, "--tasks", "ppl_wiki", "-o", out, "--resume")
    assert code == 0, err
    assert json.loads(out.read_text())["meta"]["tasks"] == ["ppl_wiki"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--limit", "3"], "limit 2 (asked 3)"),
        (["--seq-len", "16"], "seq_len 32 (asked 16)"),
        (["--plan", "uniform:2:8"], "plan "),
    ],
)
def test_resume_refuses_a_file_scored_otherwise(cli, tiny_model_dir, wiki_only, change, named):
    text = wiki_only.read_text()
    argv = [*BASE, *change]  # argparse keeps the last of a repeated option
    code, _, err = cli(
        "eval", tiny_model_dir, *argv, "--tasks", "ppl_wiki,ppl_lambada", "-o", wiki_only, "--resume"
    )
    assert code == 2 and named in err and err.count("\n") == 1, err
    assert wiki_only.read_text() == text


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--resume"], "--resume completes the results file that --output names"),
        (["--resume", "--force", "-o", "{out}"], "give one of them"),
        (["--resume", "-o", "{bad}"], "is not what qra eval writes"),
    ],
)
def test_resume_bad_input_is_one_error(cli, tiny_model_dir, tmp_path, argv, named):
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": 3}')
    argv = [a.format(out=tmp_path / "o.json", bad=bad) for a in argv]
    code, _, err = cli("eval", tiny_model_dir, *BASE, "--tasks", "ppl_wiki", *argv)
    assert code == 2 and named in err and err.count("\n") == 1, err
