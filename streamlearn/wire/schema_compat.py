"""Can data written with one Avro schema be read with another? The Avro spec's resolution rules.

:func:`incompatibilities` lists, for a writer schema and a reader schema, every place where
the spec's "Schema Resolution" says reading fails: a reader field that the writer lacks and
that has no default, a type change that is not a promotion (int -> long/float/double,
long -> float/double, float -> double, string <-> bytes), a writer enum symbol the reader
does not know (without a reader default), a writer union branch the reader cannot take,
a differently named record/enum/fixed. Fields the reader does not declare are skipped, as
the spec says. An empty list means every datum of the writer decodes with the reader.
fastavro resolves at decode time and has no such check, so a schema is checked here once,
when it is registered, instead of failing at every message.
"""
from __future__ import annotations

from typing import Any

_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
_NAMED = ("record", "error", "enum", "fixed")


def incompatibilities(writer: Any, reader: Any) -> list[str]:
    """Why ``writer`` data cannot be read as ``reader`` (both parsed or JSON schemas); [] when it can."""
    wnamed: dict[str, dict] = {}
    rnamed: dict[str, dict] = {}
    _index(writer, "", wnamed)
    _index(reader, "", rnamed)
    return _check(writer, reader, "", wnamed, rnamed, set())


def full_name(schema: dict, namespace: str = "") -> str:
    """A named type's full name (``namespace.name``), in the enclosing ``namespace`` if it has none."""
    name = schema["name"]
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


def _index(schema: Any, namespace: str, named: dict[str, dict]) -> None:
    """Remember every named type in ``schema`` so that references by name can be followed."""
    if isinstance(schema, list):
        for branch in schema:
            _index(branch, namespace, named)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in _NAMED:
            full = full_name(schema, namespace)
            named.setdefault(full, schema)
            named.setdefault(full.rpartition(".")[2], schema)  # a reference may use the short name
            namespace = full.rpartition(".")[0]
        if kind in ("record", "error"):
            for f in schema.get("fields", []):
                _index(f["type"], namespace, named)
        elif kind == "array":
            _index(schema["items"], namespace, named)
        elif kind == "map":
            _index(schema["values"], namespace, named)
        elif isinstance(kind, (dict, list)):
            _index(kind, namespace, named)


def _deref(schema: Any, named: dict[str, dict]) -> Any:
    while True:
        if isinstance(schema, str) and schema in named:
            schema = named[schema]
        elif isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)) \
                and schema.get("type") not in _NAMED:
            schema = schema["type"]  # {"type": {...}} wrapping
        elif isinstance(schema, dict) and isinstance(schema.get("type"), str) and schema["type"] in named:
            schema = named[schema["type"]]
        else:
            return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return schema["type"]  # logical types resolve by their underlying type
    return schema


def _name_of(schema: dict) -> str:
    return schema["name"].rpartition(".")[2]


def _names_match(writer: dict, reader: dict) -> bool:
    """The spec compares unqualified names; a reader alias naming the writer also matches."""
    aliases = {a.rpartition(".")[2] for a in reader.get("aliases", [])}
    return _name_of(writer) == _name_of(reader) or _name_of(writer) in aliases


def _check(writer: Any, reader: Any, where: str, wnamed: dict, rnamed: dict, seen: set) -> list[str]:
    writer, reader = _deref(writer, wnamed), _deref(reader, rnamed)
    wk, rk = _kind(writer), _kind(reader)
    at = where or "the schema"
    if wk == "union":
        problems = []
        for branch in writer:  # every branch a writer may write must be readable
            problems += _check(branch, reader, where, wnamed, rnamed, seen)
        return problems
    if rk == "union":
        for branch in reader:
            if not _check(writer, branch, where, wnamed, rnamed, seen):
                return []
        return [f"{at}: writer type {_describe(writer)} matches no branch of the reader's union"]
    if wk != rk:
        if rk in _PROMOTIONS.get(wk, ()):
            return []
        return [f"{at}: writer type {_describe(writer)} cannot be read as {_describe(reader)}"]
    if wk in ("record", "error"):
        if not _names_match(writer, reader):
            return [f"{at}: record {writer['name']} cannot be read as record {reader['name']}"]
        pair = (id(writer), id(reader))
        if pair in seen:  # a recursive type: this pair is being checked further up
            return []
        seen.add(pair)
        wfields = {f["name"]: f for f in writer["fields"]}
        problems = []
        for rf in reader["fields"]:
            names = [rf["name"], *rf.get("aliases", [])]
            wf = next((wfields[n] for n in names if n in wfields), None)
            inner = f"{where}.{rf['name']}" if where else f"field {rf['name']!r}"
            if wf is None:
                if "default" not in rf:
                    problems.append(f"{inner}: the reader needs it and the writer has no such field "
                                    f"(and the reader gives no default)")
            else:
                problems += _check(wf["type"], rf["type"], inner, wnamed, rnamed, seen)
        return problems
    if wk == "enum":
        if not _names_match(writer, reader):
            return [f"{at}: enum {writer['name']} cannot be read as enum {reader['name']}"]
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            return [f"{at}: enum symbols {missing} unknown to the reader (and it has no default)"]
        return []
    if wk == "fixed":
        if not _names_match(writer, reader) or writer["size"] != reader["size"]:
            return [f"{at}: fixed {writer['name']}[{writer['size']}] cannot be read as "
                    f"fixed {reader['name']}[{reader['size']}]"]
        return []
    if wk == "array":
        return _check(writer["items"], reader["items"], f"{where}[]", wnamed, rnamed, seen)
    if wk == "map":
        return _check(writer["values"], reader["values"], f"{where}{{}}", wnamed, rnamed, seen)
    return []  # the same primitive


def _describe(schema: Any) -> str:
    if isinstance(schema, dict):
        return f"{schema['type']} {schema['name']}" if schema["type"] in _NAMED else schema["type"]
    return str(schema)


__all__ = ["full_name", "incompatibilities"]
