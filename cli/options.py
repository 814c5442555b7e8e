"""Typer parameters generated from the RunConfig sections, so every config key has exactly one flag and one help
text. Flags arrive as text ('256,128' for a list) and are converted and range-checked by lightfmp.config."""
from __future__ import annotations

import dataclasses
import inspect
import typing

import typer

from lightfmp.config import SECTIONS, TEXT_LISTS, fields_of

_HINTS = {name: hint for tp in SECTIONS.values() for name, hint in typing.get_type_hints(tp).items()}


def _is_list(tp) -> bool:
    return typing.get_origin(tp) is list or any(_is_list(a) for a in typing.get_args(tp))


# keys whose flag takes comma-separated values
LIST_KEYS = frozenset(name for name, hint in _HINTS.items() if _is_list(hint)) | frozenset(TEXT_LISTS)


def _base_type(tp):
    if typing.get_origin(tp) is list:
        return str  # a list flag is comma-separated text, converted by the config
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _shown(default) -> str:
    if default is None or default == []:
        return ""
    return f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})"


def config_parameters(sections: tuple[str, ...]) -> list[inspect.Parameter]:
    params = []
    for section in sections:
        for f in fields_of(section):
            flag = "--" + f.name.replace("_", "-")
            tp = _base_type(_HINTS[f.name])
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if tp is bool:
                # --no-select/--select: None means "not given", so a --config file decides unless a flag is passed
                name = f.name.replace("_", "-")
                other = "--" + (name[3:] if name.startswith("no-") else "no-" + name)
                opt = typer.Option(None, f"{flag}/{other}", help=f.metadata["help"], show_default=False,
                                   rich_help_panel=section)
            else:
                opt = typer.Option(None, flag, help=f.metadata["help"] + _shown(default), show_default=False,
                                   rich_help_panel=section)
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
