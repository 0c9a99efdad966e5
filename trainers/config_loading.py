"""YAML files and ``key=value`` overrides to a validated config (``TrainingConfig`` or a subclass).

Every problem is collected and reported at once, each under its key path::

    config error in configs/trial/x.yaml (2 problems):
      lora.r: must be > 0, got 0
      quant.type: 'fp4' is a 4-bit data type, but quant.bits is 16 (from the command line)

Overrides are dotted paths with YAML values: ``lora.r=16``, ``data.limit=null``,
``lora.target_modules=[q_proj,v_proj]``.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from qsweep.trainers.config import ConfigProblems, TrainingConfig
from qsweep.trainers.errors import ConfigError

C = TypeVar("C", bound=TrainingConfig)


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loading that refuses a key given twice in one mapping."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first on line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

MAX_YAML_VALUES = 100_000
"""The most values a YAML file may expand to, aliases counted each time they are used: a spec or
config is a few hundred; an alias bomb (``*a`` of ``*b`` of ...) billions."""


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values ``node`` stands for once its aliases are expanded (computed once per node: an
    alias is the same node object)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a recursive alias counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


def _load_bounded(text: str) -> Any:
    """The YAML document in ``text``, refused before it is built if its aliases expand it past
    :data:`MAX_YAML_VALUES`."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_VALUES:
            raise ConfigError([("", f"the YAML expands to {size:,} values (aliases counted each time they "
                                    f"are used), more than the {MAX_YAML_VALUES:,} a spec may hold")])
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; syntax errors become a :class:`ConfigError`."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError([("", f"{str(path)!r} is a directory; give a YAML file")])
    if not path.is_file():
        raise ConfigError([("", f"config file {str(path)!r} does not exist")])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        bad = err.object[err.start:err.start + 1]
        raise ConfigError([("", f"not UTF-8 text (byte {err.start}: {bad!r}); save the file as UTF-8")],
                          source=str(path)) from None
    try:
        data = _load_bounded(text)
    except yaml.YAMLError as err:
        raise ConfigError([("", f"invalid YAML: {err}")], source=str(path)) from None
    except RecursionError:
        raise ConfigError([("", "the YAML is nested too deeply")], source=str(path)) from None
    except ConfigError as err:
        raise ConfigError(err.problems, source=str(path)) from None
    if data is None:
        raise ConfigError([("", "the file is empty (no YAML mapping in it)")], source=str(path))
    if not isinstance(data, dict):
        raise ConfigError([("", f"the top level must be a mapping of sections, got "
                                f"{type(data).__name__}")], source=str(path))
    return data


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["lora.r=16", ...]`` to ``{"lora.r": 16, ...}`` with YAML-typed values."""
    parsed: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
            problems.append(("", f"override {item!r} is not of the form section.key=value"))
            continue
        try:
            parsed[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            parsed[key] = raw
    if problems:
        raise ConfigError(problems, source="the command line")
    return parsed


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with each dotted key set (intermediate mappings are created)."""
    merged = copy.deepcopy(data)
    problems = []
    for dotted, value in overrides.items():
        node = merged
        *parents, leaf = dotted.split(".")
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append((".".join(parents[: i + 1]),
                                 f"is {child!r}, not a section, so {dotted} cannot be set"))
                break
            node = child
        else:
            node[leaf] = value
    if problems:
        raise ConfigError(problems, source="the command line")
    return merged


def validate(data: dict[str, Any], schema: type[C] = TrainingConfig, source: str | None = None,
             overridden: set[str] | None = None) -> C:
    """Validate raw config data against ``schema``; raise :class:`ConfigError` listing every problem."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe(err, schema, overridden or set()), source) from None


def load_config(path: Path, overrides: list[str] | None = None,
                schema: type[C] = TrainingConfig) -> C:
    """Load ``path`` (YAML), apply ``key=value`` overrides, validate everything against ``schema``.

    Raises:
        ConfigError: with every problem and its key path; nothing has been loaded yet.
    """
    parsed = parse_overrides(overrides or [])
    data = apply_overrides(read_yaml(path), parsed)
    return validate(data, schema, source=str(path), overridden=set(parsed))


def key_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic location as a YAML key path: ``reports[1].preset``, ``lora.r``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def describe(err: ValidationError, root: type[BaseModel],
             overridden: set[str]) -> list[tuple[str, str]]:
    """Pydantic errors as (key path, message) pairs in this project's wording."""
    problems = []
    for item in err.errors():
        path = key_path(item["loc"])
        error = item.get("ctx", {}).get("error")
        if isinstance(error, ConfigProblems):
            problems += [(f"{path}.{key}" if path else key, message) for key, message in error.problems]
            continue
        problems.append((path, _message(item, root)))
    return [(path, message + (" (from the command line)" if path in overridden else ""))
            for path, message in problems]


_TYPE_NAMES = {
    "int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
    "dict": "a mapping", "model": "a mapping", "list": "a list",
}


def _message(item: dict[str, Any], root: type[BaseModel]) -> str:
    kind, ctx, got = item["type"], item.get("ctx", {}), item.get("input")
    if kind == "extra_forbidden":
        fields = _fields_at(root, item["loc"][:-1])
        close = difflib.get_close_matches(str(item["loc"][-1]), fields, n=1, cutoff=0.65)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key{hint}; valid keys here: {', '.join(fields)}"
    if kind == "missing":
        return "required key is missing"
    comparisons = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
                   "less_than_equal": "<="}
    if kind in comparisons:
        bound = next(iter(ctx.values()))
        return f"must be {comparisons[kind]} {bound}, got {got!r}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {got!r}"
    if kind == "value_error":
        return f"{ctx['error']}"
    for prefix, name in _TYPE_NAMES.items():
        if kind.startswith(prefix + "_") or kind == prefix + "_type":
            return f"must be {name}, got {got!r}"
    return f"{item['msg']}, got {got!r}"


def _fields_at(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: Any = root
    for part in loc:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None or not hasattr(field.annotation, "model_fields"):
            return []
        model = field.annotation
    return list(model.model_fields)
