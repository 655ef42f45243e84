"""The layered loading of the settings: one flat set of ``snake_case`` keys from four layers.

Precedence is flag over environment (``MCP_SIDECAR_<KEY>``) over YAML file over default. Every problem in
every layer is collected and reported at once, each with its key, the offending value (secrets masked) and
what to do, so that ``check-config`` and ``serve`` refuse a bad deployment before a port opens.

Why pydantic plus a small layering function rather than ``pydantic-settings`` sources: the contract asks for
comma-separated *or* JSON lists in the environment, unknown-key detection in the file with suggestions, and
one error list across all layers with the layer named; pydantic-settings' env source decodes complex values
as JSON only and stops at the first bad layer. Validation itself is pydantic's.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sidecar.config.checks import Problem, semantic_problems
from sidecar.config.model import FIELDS, Settings, shown

ENV_PREFIX = "MCP_SIDECAR_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"


class ConfigError(Exception):
    """Raised with every problem found, never just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(p.render() for p in problems))
        self.problems = problems


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else "; see the configuration reference in README.md"


def read_file_layer(path: str) -> tuple[dict[str, Any], list[Problem]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        return {}, [Problem("config", f"cannot read the config file: {exc.strerror or exc}", repr(path))]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return {}, [Problem("config", f"the file is not valid YAML{where}", repr(path))]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return {}, [Problem("config", "the file must be a YAML mapping of setting keys to values", repr(path))]
    problems: list[Problem] = []
    layer: dict[str, Any] = {}
    for key, value in data.items():
        skey = str(key)
        if skey not in FIELDS:
            problems.append(Problem(skey, "unknown setting" + _suggest(skey), source=path))
            continue
        layer[skey] = value
    return layer, problems


def read_env_layer(env: Mapping[str, str]) -> tuple[dict[str, Any], list[Problem]]:
    layer: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in FIELDS:
            problems.append(Problem(key, f"unknown setting in environment variable {name}" + _suggest(key)))
            continue
        layer[key] = value
    return layer, problems


def load_settings(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the layers and validate. Raises :class:`ConfigError` listing every problem."""
    env = os.environ if env is None else env
    config_file = config_file or env.get(CONFIG_ENV) or None
    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    problems: list[Problem] = []
    if config_file:
        file_layer, file_problems = read_file_layer(config_file)
        problems += file_problems
        merged.update(file_layer)
        sources.update(dict.fromkeys(file_layer, config_file))
    env_layer, env_problems = read_env_layer(env)
    problems += env_problems
    merged.update(env_layer)
    sources.update({k: f"{ENV_PREFIX}{k.upper()}" for k in env_layer})
    for key, value in (flags or {}).items():
        if value is not None:
            merged[key] = value
            sources[key] = "command line"

    settings: Settings | None = None
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        bad: set[str] = set()
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "config"
            bad.add(key)
            problems.append(
                Problem(
                    key,
                    _pydantic_message(err),
                    shown(key, merged.get(key)) if key in merged else None,
                    sources.get(key),
                )
            )
        # A type error must not hide the other problems: check the relations among the keys that did parse.
        try:
            partial = Settings.model_validate({k: v for k, v in merged.items() if k not in bad})
        except ValidationError:
            partial = None
        if partial is not None:
            problems += [p for p in semantic_problems(partial, sources) if p.key not in bad]
    if settings is not None:
        problems += semantic_problems(settings, sources)
    if problems:
        raise ConfigError(problems)
    assert settings is not None
    return settings


def _pydantic_message(err: Any) -> str:
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"must be one of {expected}"
    if err.get("type") == "extra_forbidden":
        return "unknown setting"
    return msg[0].lower() + msg[1:] if msg else msg
