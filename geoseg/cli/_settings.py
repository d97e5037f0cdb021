"""Command-line options derived from the config schema, so a setting is spelled out once.

A command lists which settings it offers (:class:`Flag`: a dotted key of
:class:`geoseg.config.PipelineConfig`); the option's type, choices, bounds, help text and shown
default all come from that key's field. The options default to "not given", so the schema's
default applies wherever a value is left out, whichever way (option, YAML, Python) a setting
arrives. The command receives the options that were given as ``settings``: dotted key -> value.
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import annotated_types
import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from geoseg.config import PipelineConfig

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Flag:
    """One setting offered as an option.

    Attributes:
        key: Dotted key in :class:`~geoseg.config.PipelineConfig`, e.g. ``train.patch_size``.
        name: The option's spelling; default ``--`` + the field name with dashes.
        aliases: Old spellings, still accepted but not shown in ``--help``.
        panel: The ``--help`` panel the option is listed under.
    """

    key: str
    name: str | None = None
    aliases: tuple[str, ...] = ()
    panel: str | None = None

    @property
    def spelling(self) -> str:
        return self.name or "--" + self.key.rsplit(".", 1)[-1].replace("_", "-")


def field_of(key: str, root: type[BaseModel] = PipelineConfig) -> FieldInfo:
    """The schema field behind a dotted key (``infer.overlap``)."""
    model: Any = root
    *sections, name = key.split(".")
    for part in sections:
        model = model.model_fields[part].annotation
    return model.model_fields[name]


def help_text(field: FieldInfo) -> str:
    """The field's docstring as plain terminal text."""
    return " ".join((field.description or "").replace("``", "").split())


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def is_list(field: FieldInfo) -> bool:
    return typing.get_origin(_without_none(field.annotation)) is list


def _option_type(field: FieldInfo) -> Any:
    base = _without_none(field.annotation)
    if typing.get_origin(base) is list:
        return str  # a comma-separated list: "1,5" or "background,building"
    if base in (int, float, str, bool) or typing.get_origin(base) is Literal:
        return base
    raise TypeError(f"no command-line form for a setting of type {field.annotation!r}")


def _parameter(py_name: str, flag: Flag, spelling: str, hidden: bool) -> inspect.Parameter:
    field = field_of(flag.key)
    kind = _option_type(field)
    bounds: dict[str, Any] = {}
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            bounds["min"] = meta.ge
        elif isinstance(meta, annotated_types.Le):
            bounds["max"] = meta.le
    default = field.get_default(call_default_factory=True)
    decls = [spelling]
    if kind is bool:
        decls = [f"{spelling}/--no-{spelling.removeprefix('--')}"]
    shown: bool | str = False
    if kind is bool and default is not None:  # none: the field's text says what it picks
        shown = spelling if default else f"--no-{spelling.removeprefix('--')}"
    elif default is not None and default != []:
        shown = ",".join(map(str, default)) if isinstance(default, list) else json.dumps(default)
        shown = shown.strip('"')
    help_ = help_text(field) + (" Comma-separated." if is_list(field) else "")
    option = typer.Option(
        *decls,
        help=help_,
        show_default=shown,
        hidden=hidden,
        rich_help_panel=flag.panel,
        **bounds,
    )
    return inspect.Parameter(
        py_name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


def _parse_list(flag: Flag, text: str) -> list[Any]:
    base = _without_none(field_of(flag.key).annotation)
    (item,) = typing.get_args(base)
    try:
        return [item(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: expected a comma-separated list, e.g. 1,5", param_hint=flag.spelling
        ) from None


def with_settings(*flags: Flag) -> Callable[[F], F]:
    """Give a command one option per flag; it receives ``settings``: dotted key -> given value.

    The decorated function declares its own parameters (arguments, ``--out``, ...) and a
    ``settings: dict[str, Any]`` parameter; the options are added to its signature for Typer.
    """

    def decorate(func: F) -> F:
        names: dict[str, tuple[Flag, str]] = {}  # python parameter name -> (flag, spelling)
        params = []
        for i, flag in enumerate(flags):
            for j, spelling in enumerate((flag.spelling, *flag.aliases)):
                py_name = f"setting_{i}_{j}"
                names[py_name] = (flag, spelling)
                params.append(_parameter(py_name, flag, spelling, hidden=j > 0))
        own = inspect.signature(func, eval_str=True)
        kept = [p for p in own.parameters.values() if p.name != "settings"]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given: dict[str, Any] = {}
            for py_name, (flag, spelling) in names.items():
                value = kwargs.pop(py_name, None)
                if value is None:
                    continue
                if flag.key in given:
                    raise typer.BadParameter(
                        f"given twice (as {spelling} too); give it once", param_hint=flag.spelling
                    )
                given[flag.key] = _parse_list(flag, value) if is_list(field_of(flag.key)) else value
            return func(*args, settings=given, **kwargs)

        all_params = kept + params
        wrapper.__signature__ = own.replace(parameters=all_params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in all_params}
        del wrapper.__wrapped__  # Typer must read the new signature, not func's
        return wrapper  # type: ignore[return-value]

    return decorate


def section_settings(settings: dict[str, Any], section: str) -> dict[str, Any]:
    """The given settings of one section, by field name: ``infer.tta`` -> ``tta``."""
    prefix = section + "."
    return {k.removeprefix(prefix): v for k, v in settings.items() if k.startswith(prefix)}
