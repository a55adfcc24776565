"""A verb's options from its typed options dataclass (litgpt's way): one argparse option per
field, the flag from the field's name, the type from its annotation, the default from the
field, the choices from a ``Literal`` and the help from the docstring under the field.

So the defaults live in one place, the dataclass (which takes a library config's default where
one owns the field), and ``qra VERB --help`` shows each of them (``cli._HelpFormatter``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union


def field_docs(options: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``options``, whitespace folded to one line.

    Python keeps no attribute docstrings at run time, so they are read from the class's source
    (a string statement right after an annotated assignment, as PEP 257 and Sphinx read them).
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(options)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for statement, following in zip(body, body[1:], strict=False):
        is_doc = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) and is_doc:
            docs[statement.target.id] = " ".join(str(following.value.value).split())  # type: ignore[attr-defined]
    return docs


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> X; anything else as it is."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_options(
    parser: argparse.ArgumentParser,
    options: type,
    *,
    positional: Sequence[str] = (),
    short: Mapping[str, str] | None = None,
    metavars: Mapping[str, str] | None = None,
    help_suffix: Mapping[str, str] | None = None,
) -> None:
    """Adds one option per field of dataclass ``options`` to ``parser``, in field order.

    A field without a default is required; a ``bool`` field (default False) is a flag; a
    ``Literal`` gives the choices; ``int``/``float`` give the type (``X | None`` as X, None
    meaning "not given"). A field whose flag the parser already has (``--no-progress``, which
    every verb shares) is left to it.

    Args:
        parser: the verb's parser.
        options: the verb's frozen options dataclass.
        positional: fields given by position (optional when they have a default), e.g. model.
        short: a short flag per field, e.g. {"output": "-o"}.
        metavars: a metavar per field (argparse's default is the name in capitals).
        help_suffix: text appended to a field's help, e.g. the presets' sizes.

    Raises:
        TypeError: for a field type argparse cannot take (a list, a nested dataclass), naming it.
    """
    docs = field_docs(options)
    hints = typing.get_type_hints(options)
    short, metavars, help_suffix = short or {}, metavars or {}, help_suffix or {}
    for field in dataclasses.fields(options):
        name = field.name
        flag = "--" + name.replace("_", "-")
        if flag in parser._option_string_actions:
            continue
        kind = _unwrap_optional(hints[name])
        help_text = " ".join(filter(None, (docs.get(name, ""), help_suffix.get(name))))
        given: dict[str, Any] = {"help": help_text}
        if name in metavars:
            given["metavar"] = metavars[name]
        has_default = field.default is not dataclasses.MISSING
        if kind is bool:
            if field.default is not False:
                raise TypeError(
                    f"{options.__name__}.{name}: a flag must default to False, got {field.default!r}"
                )
            parser.add_argument(flag, action="store_true", **given)
            continue
        if typing.get_origin(kind) is Literal:
            given["choices"] = typing.get_args(kind)
        elif kind in (int, float):
            given["type"] = kind
        elif kind is not str:
            raise TypeError(f"{options.__name__}.{name}: argparse cannot take a {kind!r} option")
        if name in positional:
            nargs = "?" if has_default else None
            parser.add_argument(name, nargs=nargs, default=field.default if has_default else None, **given)
            continue
        flags = [short[name], flag] if name in short else [flag]
        if has_default:
            parser.add_argument(*flags, default=field.default, **given)
        else:
            parser.add_argument(*flags, required=True, **given)


def options_from(options: type, values: Mapping[str, Any]) -> Any:
    """An ``options`` instance from the parsed ``values`` (keys that are not fields are ignored:
    the namespace also holds the verb's name and --debug)."""
    names = {f.name for f in dataclasses.fields(options)}
    return options(**{k: v for k, v in values.items() if k in names})
