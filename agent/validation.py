"""Turn pydantic validation errors into located problems: file, line, column, field path."""

from __future__ import annotations

import types
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent.errors import ConfigError, Problem
from agent.yamlsrc import Document, Loc

M = TypeVar("M", bound=BaseModel)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation such as `tuple[X, ...] | None`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None:
        return None
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _model_in(args[0])
    if origin is dict:
        return _model_in(args[1]) if len(args) == 2 else None
    if origin in (tuple, list, typing.Union, types.UnionType):
        for arg in args:
            if (found := _model_in(arg)) is not None:
                return found
    return None


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc`."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _model_in(field.annotation)
    return model


def _has(node: object, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _data_loc(data: object, raw: tuple[int | str, ...], kind: str) -> Loc:
    """Keep the parts of a pydantic location that address the input; drop union/validator tags."""
    loc: list[str | int] = []
    node = data
    for index, part in enumerate(raw):
        last = index == len(raw) - 1
        if _has(node, part):
            node = node[part]  # type: ignore[index]
            loc.append(part)
        elif last and kind == "missing":
            loc.append(part)
    return tuple(loc)


def _message(model: type[BaseModel], loc: Loc, error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        allowed = ", ".join(sorted(owner.model_fields)) if owner else "none"
        return f"unknown key; allowed keys: {allowed}"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, str | int | float | bool) and repr(value) not in message:
        message += f" (got {value!r})"
    return message


def problems_from(
    model: type[BaseModel], doc: Document, exc: ValidationError, base: Loc = ()
) -> list[Problem]:
    """Located problems for a validation of `doc.data[base]` against `model`."""
    data = doc.data
    for part in base:
        data = data[part]  # type: ignore[index]
    problems = []
    for error in exc.errors():
        loc = _data_loc(data, tuple(error["loc"]), error["type"])
        message = _message(model, loc, error)
        problems.append(
            doc.problem((*base, *loc), message, prefer_key=error["type"] == "extra_forbidden")
        )
    return sorted(problems, key=lambda p: (p.line or 0, p.column or 0))


def validate(model: type[M], doc: Document, base: Loc = ()) -> M:
    """`model` from the document (or its part at `base`), or `ConfigError` naming each fault."""
    data = doc.data
    for part in base:
        data = data[part]  # type: ignore[index]
    if not isinstance(data, dict):
        raise ConfigError([doc.problem(base, f"expected a mapping, got {type(data).__name__}")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems_from(model, doc, exc, base)) from None
