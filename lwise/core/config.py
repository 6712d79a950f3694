"""One config contract per stage: typed settings built from a config section.

The JSON schema (`schemas/config.schema.yaml`) holds every default and every constraint; a
stage's dataclass declares the fields without defaults, and `from_section` fills them from the
schema, validates the merged section and names the offending key on any problem. The workflow
validates the whole config once; the library validates again, so a direct caller (tests, the
command line, a notebook) gets the same checks and defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import jsonschema
import yaml

__all__ = [
    "ConfigError",
    "SCHEMA",
    "Section",
    "schema",
    "subschema",
    "defaults",
    "validate",
    "from_section",
]

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"

T = TypeVar("T")


class ConfigError(ValueError):
    """A config section does not fit its schema; the message names the key and the value."""


@functools.cache
def schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def _resolve(node: dict) -> dict:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        node = schema()["$defs"][name]
    return node


def subschema(section: str) -> dict:
    """The schema of a dotted section such as "upload" or "guide.train"."""
    node = schema()
    for i, part in enumerate(section.split(".")):
        properties = _resolve(node).get("properties", {})
        if i == 0 and part not in properties:
            properties = schema().get("$defs", {})  # per-dataset sections such as "build"
        if part not in properties:
            raise KeyError(f"{SCHEMA.name} has no section {section!r}")
        node = properties[part]
    return _resolve(node)


def defaults(section: str) -> dict[str, Any]:
    """The schema's default of every key of `section` that has one."""
    out = {}
    for key, spec in subschema(section).get("properties", {}).items():
        spec = _resolve(spec)
        if "default" in spec:
            out[key] = copy.deepcopy(spec["default"])
    return out


def _plain(value: Any) -> Any:
    """Tuples as lists and mappings as dicts, as YAML would give them."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def validate(cfg: Mapping[str, Any], section: str) -> None:
    """Raise ConfigError naming `section.key` and the value for the first problems found."""
    node = {**subschema(section), "$defs": schema().get("$defs", {})}
    validator = jsonschema.Draft202012Validator(node)
    errors = sorted(validator.iter_errors(_plain(cfg)), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:5]:
            where = ".".join([section, *(str(p) for p in err.absolute_path)])
            lines.append(f"{where} {err.instance!r}: {err.message}")
        raise ConfigError("config " + "; ".join(lines))


def from_section(cls: type[T], cfg: Mapping[str, Any] | None, section: str, **extra: Any) -> T:
    """`cls` built from the schema's defaults overridden by `cfg`, after validation.

    Keys of the section that `cls` has no field for (e.g. `upload.local_port`, read by the
    workflow) are validated and left out; `extra` sets fields that are not config values, or
    replaces one after validation (e.g. the resolved endpoint URL of `upload.endpoint_url`).
    """
    merged = {**defaults(section), **dict(cfg or {})}
    validate(merged, section)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in merged.items() if k in names}
    return cls(**(values | extra))


class Section:
    """Mixin for a stage's settings dataclass: `Settings.from_config(cfg)`."""

    SECTION: ClassVar[str]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None = None, **extra: Any):
        return from_section(cls, cfg, cls.SECTION, **extra)


def check_yaml_file(path: str | Path) -> None:
    """Raise ConfigError with the line and column of a YAML syntax error in `path` (Snakemake's
    own message names neither); a missing file is left to Snakemake."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: YAML syntax error{where}: {err.problem or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML syntax error: {err}") from None
