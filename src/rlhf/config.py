"""Stage configuration: YAML files with dotted ``key=value`` overrides, validated by pydantic.

Every stage has one small config class (a pydantic model with a one-line description per field).
``load_config(SFTConfig, "configs/sft_lab.yaml", ["lr=3e-4", "lora.r=8"])`` reads the file, applies the
overrides (values parsed as YAML, so ``8`` is an int, ``true`` a bool, ``null`` None, ``[a, b]`` a list),
and validates the result. Problems raise :class:`ConfigError` with every message at once, each naming
the file and the dotted key: an unknown key (with the closest known keys), a wrong type, an impossible
value.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rlhf.errors import UsageError

C = TypeVar("C", bound="StageConfig")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def rlhf_home() -> Path:
    """Where made models and fetched files are cached: ``$RLHF_HOME``, by default ``~/.cache/rlhf``."""
    return Path(os.environ.get("RLHF_HOME", "~/.cache/rlhf")).expanduser()


class ConfigError(UsageError, ValueError):
    """A configuration that cannot be used; the message lists every problem found."""

    exit_code = 2
    label = "config error"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML would
    silently keep the last value)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                raise ConfigError(
                    f"{self.name}:{line}: key '{key}' is given twice (first on line {seen[key]}); keep one"
                )
            if isinstance(key, str | int | float | bool):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


class StageConfig(BaseModel):
    """Base of every stage's config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_dotted(tree: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"{where}: cannot set '{key}': '{part}' is a {type(child).__name__}, not a section"
            )
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}': expected key=value, e.g. lr=3e-4 or lora.r=8")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({e})") from None
        if isinstance(value, str) and _FLOAT.fullmatch(value):  # YAML 1.1 reads 3e-4 as a string
            value = float(value)
        _set_dotted(tree, key.strip(), value, f"override '{item}'")
    return tree


def merge_trees(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, recursively for nested mappings."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            merge_trees(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def _known_keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in cls.model_fields.items():
        keys.append(prefix + name)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            keys += _known_keys(info.annotation, f"{prefix}{name}.")
    return keys


def _describe(cls: type[BaseModel], error: ValidationError, where: str) -> str:
    lines = []
    known = _known_keys(cls)
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            lines.append(f"{where}: unknown key '{key}'{hint}")
        else:
            lines.append(f"{where}: '{key}': {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Read ``path`` (YAML; None for the defaults), apply ``overrides``, validate as ``cls``."""
    where = str(path) if path else "defaults"
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
        try:
            loader = _UniqueKeyLoader(text)
            loader.name = str(path)
            try:
                loaded = loader.get_single_data()
            finally:
                loader.dispose()
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(loaded).__name__}")
        tree = loaded or {}
    if overrides:
        tree = merge_trees(tree, parse_overrides(overrides))
        where += " + overrides"
    return validate_config(cls, tree, where)


def with_nested_defaults(cls: type[BaseModel], tree: dict[str, Any]) -> dict[str, Any]:
    """Fill a partial nested section (``optim: {lr: 1e-4}``) from the field's own default (a stage's
    ``optim`` or ``run`` defaults differ between stages), rather than from the section class's
    defaults, which is what pydantic would do."""
    out = dict(tree)
    for name, field in cls.model_fields.items():
        if isinstance(out.get(name), dict) and field.default_factory is not None:
            default = field.default_factory()
            if isinstance(default, BaseModel):
                out[name] = merge_trees(default.model_dump(), out[name])
    return out


def validate_config(cls: type[C], tree: dict[str, Any], where: str) -> C:
    """Validate a mapping as ``cls``; errors name ``where`` (a file, or a section of one)."""
    try:
        cfg = cls.model_validate(with_nested_defaults(cls, tree))
    except ValidationError as e:
        raise ConfigError(_describe(cls, e, where)) from None
    bad = non_finite_fields(cfg)
    if bad:
        raise ConfigError(
            "\n".join(f"{where}: '{key}': must be a finite number (got {value})" for key, value in bad)
        )
    return cfg


def non_finite_fields(model: BaseModel, prefix: str = "") -> list[tuple[str, float]]:
    """``(dotted key, value)`` of every float setting of ``model`` (nested sections, lists and tuples
    included) that is inf or nan: pydantic's ``gt=0`` lets ``inf`` through (``optim.lr=inf``)."""
    out: list[tuple[str, float]] = []

    def visit(key: str, value: Any) -> None:
        if isinstance(value, BaseModel):
            out.extend(non_finite_fields(value, key + "."))
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                visit(f"{key}.{i}", item)
        elif isinstance(value, float) and not math.isfinite(value):
            out.append((key, value))

    for name in type(model).model_fields:
        visit(prefix + name, getattr(model, name))
    return out
