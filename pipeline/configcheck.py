"""The workflow's configuration checked against workflow/schemas/config.schema.yaml before any job
is planned, with errors that name the full key path (`tables.pascal.table9.train.bta`), and every
run's merged training settings (defaults, dataset, table, sweep value) checked against the one
definition of the training settings."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


@lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def _validator(subschema: dict):
    from jsonschema import Draft202012Validator

    return Draft202012Validator({**subschema, "$defs": schema()["$defs"]})


def key_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _message(error, prefix: str) -> str:
    where = key_path([*([prefix] if prefix else []), *error.absolute_path])
    if error.validator == "additionalProperties":
        return f"{where}: {error.message} (a typo? the allowed keys are in config/README.md)"
    if error.validator == "type" and _reads_as_another_type(error.instance) and "." in where:
        return f"{where}: {error.message} ({_NESTED_CONFIG_HINT})"
    return f"{where}: {error.message}"


def _reads_as_another_type(value: Any) -> bool:
    """A string that YAML would have read as a number or boolean: `'64'`, not `'a'`."""
    if not isinstance(value, str):
        return False
    try:
        return not isinstance(yaml.safe_load(value), str)
    except yaml.YAMLError:
        return False


# Snakemake reads the values of `--config train='{K: 64}'` with YAML's BaseLoader: every nested
# scalar arrives as a string.
_NESTED_CONFIG_HINT = (
    "given with --config? Snakemake passes nested values as strings: put them in a file and pass it with --configfile"
)


def _check_finite(value: Any, parts: list[str | int]) -> None:
    """NaN and infinity fail no comparison, so the schema's ranges let them through: refuse them
    anywhere in a configuration, naming the key (`.nan` in YAML is a number)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{key_path(parts)}: {value} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, [*parts, key])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, [*parts, i])


def _refuse_first_error(subschema: dict, instance: Any, where: str) -> None:
    """InputError for the deepest schema error (the most specific key path), if any."""
    errors = sorted(_validator(subschema).iter_errors(instance), key=lambda e: -len(e.absolute_path))
    if errors:
        raise InputError(_message(errors[0], where))


def check_config(config: dict[str, Any]) -> None:
    """Raise InputError naming the first offending key path (the deepest error first)."""
    _check_finite(config, [])
    _refuse_first_error({k: v for k, v in schema().items() if k != "$defs"}, config, "")


def check_train(train: dict[str, Any], where: str) -> None:
    """One run's merged training settings against the training definition."""
    _check_finite(train, [where])
    _refuse_first_error(schema()["$defs"]["train"], train, where)


def check_view(view: Any, where: str) -> None:
    """A view from anywhere (a config, `--view`, a model file) against the schema's view
    definition: the command line's views get the ranges and key names the config's have."""
    if not isinstance(view, dict):
        raise InputError(f'{where}: expected a view as a mapping (e.g. {{"mode": "resize", "size": [360, 480]}})')
    _check_finite(view, [where])
    _refuse_first_error(schema()["$defs"]["view"], view, where)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader (merge keys included), refusing a key given twice in one mapping (the
    last would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def check_config_files(paths: list[str | Path]) -> None:
    """Read every configuration file as `nes check-config` does: the workflow calls this on the
    files Snakemake merged, so that both refuse the same things (a key given twice, which
    Snakemake's own reader lets the last one win, named by file and line)."""
    for path in paths:
        load_yaml(path)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML configuration file as a dict; a syntax error names the file, line and column (which
    Snakemake's own message for a bad --configfile does not)."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise InputError(f"{where}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: YAML syntax error: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data
