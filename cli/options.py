"""Typer parameters generated from RunConfig, so every config key has exactly one flag and one help text."""
from __future__ import annotations

import inspect
import typing

import typer

from lightfmp.config import RunConfig, fields_of

_HINTS = typing.get_type_hints(RunConfig)


def _base_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def config_parameters(groups: tuple[str, ...]) -> list[inspect.Parameter]:
    params = []
    for f in fields_of():
        if f.metadata["group"] not in groups:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(_HINTS[f.name])
        shown = "" if f.default is None else f" (default: {f.default})"
        if tp is bool:
            # --no-select/--select: None means "not given", so a --config file decides unless a flag is passed
            name = f.name.replace("_", "-")
            other = "--" + (name[3:] if name.startswith("no-") else "no-" + name)
            opt = typer.Option(None, f"{flag}/{other}", help=f.metadata["help"], show_default=False,
                               rich_help_panel=f.metadata["group"])
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt,
                                            annotation=typing.Optional[bool]))
        else:
            opt = typer.Option(None, flag, help=f.metadata["help"] + shown, show_default=False,
                               rich_help_panel=f.metadata["group"])
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt,
                                            annotation=typing.Optional[tp]))
    return params


def with_parameters(func, params: list[inspect.Parameter]):
    """Give `func(**kwargs)` an explicit signature that Typer reads as its options."""
    func.__signature__ = inspect.Signature(params)
    func.__annotations__ = {p.name: p.annotation for p in params}
    return func


def config_flags(kwargs: dict) -> dict:
    """The RunConfig values the user gave on the command line (None = not given)."""
    names = {f.name for f in fields_of()}
    return {k: v for k, v in kwargs.items() if k in names and v is not None}
