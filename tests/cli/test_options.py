"""The argparse builder of ``cli/options.py``: one option per dataclass field, its flag, type,
default, choices and help from the field; and qra search's and qra train's options from theirs."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Literal

import pytest

from qradaptor.cli.options import add_options, field_docs, options_from


@dataclass(frozen=True, kw_only=True)
class Toy:
    """A verb's options for the tests."""

    model: str | None = None
    """the model"""
    budget: str
    """what may be spent,
    over two lines"""
    size: int | None = None
    """a size"""
    rate: float = 0.5
    """a rate"""
    mode: Literal["fast", "slow"] = "fast"
    """how"""
    dry_run: bool = False
    """do nothing"""
    no_progress: bool = False
    """no progress output"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    parser.add_argument("--no-progress", action="store_true", help="shared by every verb")
    add_options(parser, Toy, positional=("model",), short={"budget": "-b"}, metavars={"size": "N"})
    return parser


def test_field_docs_are_the_docstrings_under_the_fields_on_one_line() -> None:
    docs = field_docs(Toy)
    assert docs["budget"] == "what may be spent, over two lines"
    assert docs["mode"] == "how" and set(docs) == {f.name for f in dataclasses.fields(Toy)}


def test_each_field_becomes_its_option() -> None:
    parser = _parser()
    argv = ["m", "-b", "4bits", "--size", "3", "--rate", "0.25", "--mode", "slow", "--dry-run"]
    args = parser.parse_args(argv)
    assert vars(args) == {
        "no_progress": False,
        "model": "m",
        "budget": "4bits",
        "size": 3,
        "rate": 0.25,
        "mode": "slow",
        "dry_run": True,
    }
    assert options_from(Toy, {**vars(args), "_verb": "toy"}) == Toy(
        model="m", budget="4bits", size=3, rate=0.25, mode="slow", dry_run=True
    )
    defaults = parser.parse_args(["--budget", "1GB"])
    assert options_from(Toy, vars(defaults)) == Toy(budget="1GB")  # every default is the field's
    by_dest = {a.dest: a for a in parser._actions}
    assert by_dest["mode"].choices == ("fast", "slow") and by_dest["size"].metavar == "N"
    assert by_dest["budget"].required and by_dest["budget"].help == "what may be spent, over two lines"
    assert by_dest["no_progress"].help == "shared by every verb"  # the parser's own is kept


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: -b/--budget"),
        (["-b", "1", "--mode", "x"], "invalid choice"),
    ],
)
def test_a_missing_or_bad_value_is_argparses_error(argv, message, capsys) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_type_argparse_cannot_take_is_refused_naming_the_field() -> None:
    @dataclass(frozen=True)
    class Listy:
        values: list[int] = dataclasses.field(default_factory=list)
        """several"""

    with pytest.raises(TypeError, match="Listy.values"):
        add_options(argparse.ArgumentParser(), Listy)


def _sub(verb: str) -> argparse.ArgumentParser:
    from qradaptor.cli import build_parser
    from qradaptor.cli.common import VERB_DEST

    parser = build_parser()
    return next(a for a in parser._actions if a.dest == VERB_DEST).choices[verb]


@pytest.mark.parametrize("verb", ["search", "train"])
def test_the_verbs_options_are_their_dataclasses_fields(verb) -> None:
    """Every field an option with the field's default and a help; no option without a field."""
    from qradaptor.recipes.search_options import SearchOptions
    from qradaptor.recipes.train_options import TrainOptions

    options = {"search": SearchOptions, "train": TrainOptions}[verb]
    actions = {a.dest: a for a in _sub(verb)._actions if a.dest not in ("help", "_debug", argparse.SUPPRESS)}
    fields = {f.name: f for f in dataclasses.fields(options)}
    assert set(actions) == set(fields)
    docs = field_docs(options)
    for name, field in fields.items():
        if field.default is not dataclasses.MISSING:
            assert actions[name].default == field.default, name
        assert docs[name] and actions[name].help.startswith(docs[name]) or name == "no_progress", name


def test_the_serve_type_is_the_engines_serve_takes() -> None:
    from typing import get_args

    from qradaptor.export.serve_targets import SERVE_TARGETS
    from qradaptor.recipes.search_options import Serve

    assert get_args(Serve) == SERVE_TARGETS
