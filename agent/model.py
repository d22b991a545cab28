"""Value types shared by every stage. Frozen, typed, and safe to hand across tasks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator

RESOURCE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


class ResourceType(StrEnum):
    SCENARIO = "scenario"
    PACKAGE = "package"
    MODEL = "model"
    NODE = "node"


def check_resource_id(value: str) -> str:
    """A resource id becomes an etcd key segment: refuse anything that could break the layout."""
    if not RESOURCE_ID_PATTERN.fullmatch(value):
        bad = sorted({c for c in value if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        detail = f"; it contains {' '.join(repr(c) for c in bad)}" if bad else ""
        raise ValueError(
            f"invalid resource id {value!r}: ids are 1-253 characters of letters, digits, '.', "
            f"'_' and '-', starting with a letter or digit{detail}"
        )
    return value


ResourceId = Annotated[str, AfterValidator(check_resource_id)]


Value = float | int | str | bool


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured value of one resource at one instant (wall clock, ns since the epoch)."""

    resource_type: ResourceType
    resource_id: str
    metric: str
    value: Value
    unit: str
    ts_ns: int
