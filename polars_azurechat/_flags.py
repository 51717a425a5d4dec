"""Dataclass fields as ``typer`` flags.

One definition of each option, its default and its doc, whether it is given in Python or
on the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import typer

__all__ = ["attribute_docs", "dataclass_flags", "with_flags"]


def dataclass_flags(
    cls: type,
    *,
    docs: Mapping[str, str],
    types: Mapping[str, Any] = {},
    switches: frozenset[str] = frozenset(),
    skip: frozenset[str] = frozenset(),
) -> list[inspect.Parameter]:
    """The fields of a dataclass as CLI flags: same names, defaults and docs."""
    module = vars(sys.modules[cls.__module__])
    flags = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind: Any = types.get(f.name, f.type)
        if isinstance(kind, str):
            kind = eval(kind, module)  # noqa: S307 - the package's own annotations
        dash = f.name.replace("_", "-")
        decls = [f"--{dash}/--no-{dash}"] if f.name in switches else []
        envvar = f.metadata.get("envvar")
        info = typer.Option(
            *decls,
            help=docs.get(f.name, "").replace("``", "'"),
            envvar=envvar,
            show_envvar=bool(envvar),
        )
        flags.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=f.default,
                annotation=Annotated[kind, info],
            )
        )
    return flags


def with_flags(
    flags: Callable[[], list[inspect.Parameter]],
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command ``flags()`` after its own parameters (its ``**kwargs`` get them)."""

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        own = list(inspect.signature(func, eval_str=True).parameters.values())[:-1]

        @functools.wraps(func)
        def command(**kwargs: Any) -> None:
            func(**kwargs)

        command.__signature__ = inspect.Signature([*own, *flags()])  # type: ignore[attr-defined]
        command.__annotations__ = {}
        del command.__wrapped__
        return command

    return decorate


def attribute_docs(cls: type) -> dict[str, str]:
    """One line of doc per field, from a numpydoc ``Attributes`` section."""
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in (inspect.getdoc(cls) or "").splitlines():
        if line and not line.startswith(
            " "
        ):  # "name" or "a, b": the fields it documents
            names = [n.strip() for n in line.split(",") if n.strip().isidentifier()]
        elif names:
            for name in names:
                docs[name] = f"{docs.get(name, '')} {line.strip()}".strip()
    return docs
