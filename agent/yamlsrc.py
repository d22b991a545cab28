"""YAML documents that remember where each value came from.

PyYAML's C loader composes the node tree (with line/column marks), and the same loader constructs
the plain data from it, so each file is parsed once. Locations let a validation error name the file,
line, column and field path; duplicate keys, which YAML itself silently merges, are reported.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agent.errors import ConfigError, Problem

Loc = tuple[str | int, ...]
Mark = tuple[int, int]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def format_loc(loc: Sequence[str | int]) -> str:
    """`("a", "b", 0, "c")` -> `a.b[0].c`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document of a file, its data, and the 1-based position of every key and value."""

    file: Path
    data: object
    start: Mark
    values: Mapping[Loc, Mark] = field(default_factory=dict)
    keys: Mapping[Loc, Mark] = field(default_factory=dict)

    def locate(self, loc: Loc, *, prefer_key: bool = False) -> Mark:
        """The position of `loc`, or of its nearest ancestor that exists in the file."""
        if prefer_key and loc in self.keys:
            return self.keys[loc]
        probe = loc
        while probe:
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), self.start)

    def problem(self, loc: Loc, message: str, *, prefer_key: bool = False) -> Problem:
        line, column = self.locate(loc, prefer_key=prefer_key)
        return Problem(self.file, line, column, format_loc(loc), message)


def _mark(node: yaml.Node) -> Mark:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Walker:
    """Records the position of every key and value; reports duplicate keys."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.values: dict[Loc, Mark] = {}
        self.keys: dict[Loc, Mark] = {}
        self.problems: list[Problem] = []

    def walk(self, node: yaml.Node, loc: Loc = ()) -> None:
        self.values[loc] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, Mark] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = (*loc, key)
                line, column = _mark(key_node)
                if key in seen:
                    message = f"duplicate key (first defined at line {seen[key][0]})"
                    self.problems.append(
                        Problem(self.file, line, column, format_loc(child), message)
                    )
                    continue
                seen[key] = self.keys[child] = (line, column)
                self.walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, (*loc, index))


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    if mark is None:
        return Problem(path, None, None, "", message)
    return Problem(path, mark.line + 1, mark.column + 1, "", message)


def read_text(path: Path) -> str:
    """The file's text, or a `ConfigError` that says why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(path, None, None, "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(path, None, None, "", "is a directory, not a file")]) from None
    except PermissionError:
        raise ConfigError([Problem(path, None, None, "", "permission denied")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(path, None, None, "", f"not UTF-8 text: {exc}")]) from None


def iter_documents(path: Path, text: str | None = None) -> Iterator[Document]:
    """Each YAML document in `path`; YAML errors and duplicate keys raise `ConfigError`."""
    source = read_text(path) if text is None else text
    loader = _Loader(source)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            walker = _Walker(path)
            walker.walk(node)
            if walker.problems:
                raise ConfigError(walker.problems)
            data = loader.construct_document(node)
            yield Document(path, data, _mark(node), walker.values, walker.keys)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(path, exc)]) from None
    finally:
        loader.dispose()


def load_single(path: Path, text: str | None = None) -> Document:
    """The one document of a configuration file. A file with no document (empty, whitespace or
    comments only) is an error: what an editor or a deployment tool leaves when it truncated
    the file mid-write must never mean "all defaults". `{}` asks for every default."""
    docs = list(iter_documents(path, text))
    if not docs:
        raise ConfigError(
            [
                Problem(
                    path,
                    1,
                    1,
                    "",
                    "the file is empty (no YAML document): write {} for every default",
                )
            ]
        )
    if len(docs) > 1:
        line, column = docs[1].start
        raise ConfigError(
            [Problem(path, line, column, "", "expected one YAML document, found several")]
        )
    return docs[0]
