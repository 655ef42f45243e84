"""Configuration: one flat set of ``snake_case`` keys from four layers, flag over environment
(``MCP_SIDECAR_<KEY>``) over YAML file over default, every problem reported at once.

Three parts, each importable from here as before: the settings model (:mod:`sidecar.config.model`), the
layered loading with did-you-mean suggestions (:mod:`sidecar.config.loading`) and the semantic checks of
``check-config`` (:mod:`sidecar.config.checks`).
"""

from __future__ import annotations

from sidecar.config.checks import (
    TEMPLATE_ROOTS,
    Problem,
    header_template_problems,
    parse_host_port,
    parse_key_ring,
    semantic_problems,
)
from sidecar.config.loading import (
    CONFIG_ENV,
    ENV_PREFIX,
    ConfigError,
    load_settings,
    read_env_layer,
    read_file_layer,
)
from sidecar.config.model import FIELDS, SECRET_KEYS, Settings, describe, parse_list, shown

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "FIELDS",
    "SECRET_KEYS",
    "TEMPLATE_ROOTS",
    "ConfigError",
    "Problem",
    "Settings",
    "describe",
    "header_template_problems",
    "load_settings",
    "parse_host_port",
    "parse_key_ring",
    "parse_list",
    "read_env_layer",
    "read_file_layer",
    "semantic_problems",
    "shown",
]
