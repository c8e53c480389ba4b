"""Command-line options generated from an options class, so each default, type and help text is stated once, on
the field, and the CLI cannot drift from the class it fills.

An options class is a dataclass (help in ``field(metadata={"help": ...})``) or a pydantic model (help in the
field's description, e.g. its attribute docstring). A field ``max_batch: int = 64`` becomes ``--max-batch``
(``type=int, default=64``); ``bool`` a switch (``--fp16``; ``--no-x`` too when the default is true);
``Literal[...]`` a choice; ``list[X]`` one or more values; ``X | None`` an optional ``X``.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union


@dataclass(frozen=True)
class Option:
    """One field of an options class: what the command line needs to offer it."""

    name: str
    annotation: Any
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def strip_optional(annotation: Any) -> Any:
    """``X`` for ``X``, ``X | None``, ``Optional[X]`` and ``Annotated[X, ...]`` (the type a value is parsed as);
    for ``X | Y`` the first alternative (what a command line gives; a caller in Python may pass the others)."""
    if typing.get_origin(annotation) is Annotated:
        return strip_optional(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return strip_optional(args[0])
    return annotation


def options_of(cls: type) -> list[Option]:
    """The fields of a dataclass or pydantic model class, in declaration order."""
    if hasattr(cls, "model_fields"):
        return [Option(name, f.annotation, f.get_default(call_default_factory=True), f.description or "")
                for name, f in cls.model_fields.items()]
    hints = typing.get_type_hints(cls)
    return [Option(f.name, hints[f.name],
                   f.default_factory() if f.default is dataclasses.MISSING else f.default,
                   f.metadata.get("help", "")) for f in dataclasses.fields(cls)]


def _argparse_kind(option: Option) -> dict[str, Any]:
    tp = strip_optional(option.annotation)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction if option.default else "store_true"}
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        return {"choices": choices, "type": type(choices[0])}
    if typing.get_origin(tp) is list:
        return {"nargs": "+", "type": strip_optional(typing.get_args(tp)[0])}
    if tp in (int, float, str, Path):
        return {"type": tp}
    raise TypeError(f"--{option.name}: no command-line form for {option.annotation!r}; leave it out (skip=)")


def _help(option: Option) -> str:
    text = " ".join(option.help.split()).replace("%", "%%")
    if option.default is None or isinstance(option.default, bool):
        return text
    return f"{text} (default: %(default)s)".lstrip()


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                names: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> list[str]:
    """Add ``--flag`` options for the fields of ``cls`` (only ``names`` when given, never ``skip``); returns the
    field names added, for :func:`picked`."""
    added = []
    for option in options_of(cls):
        if option.name in skip or (names is not None and option.name not in names):
            continue
        parser.add_argument(option.flag, dest=option.name, default=option.default, help=_help(option),
                            **_argparse_kind(option))
        added.append(option.name)
    return added


def picked(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The parsed values of ``names``: keyword arguments for the options class they came from."""
    return {name: getattr(args, name) for name in names}
