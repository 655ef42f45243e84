"""Gate configuration: defaults, layering (flag > env > file > default), lists, and problems reported at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.config import ConfigError, Settings, load_settings

BASE_ENV = {"MCP_SIDECAR_UPSTREAM": "http://127.0.0.1:8000", "MCP_SIDECAR_PUBLIC_URL": "https://mcp.example.com"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # check-config reads os.environ; no MCP_SIDECAR_* of the machine running the tests may leak in.
    for name in list(os.environ):
        if name.startswith("MCP_SIDECAR_") or name == "PROMETHEUS_MULTIPROC_DIR":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return str(path)


def problems_of(exc: ConfigError) -> dict[str, str]:
    return {p.key: p.render() for p in exc.problems}


# --- defaults --------------------------------------------------------------------------------------------

GATE_DEFAULTS = {
    "mode": "gate",
    "listen": "0.0.0.0:8080",
    "metrics_listen": "0.0.0.0:9090",
    "workers": 1,
    "authorization_servers": [],
    "leeway_seconds": 60,
    "opaque_tokens": "pass",
    "jwks_url": None,
    "issuer": None,
    "audience": [],
    "required_scopes": [],
    "allowed_origins": [],
    "backend_connect_timeout_seconds": 5,
    "backend_timeout_seconds": 30,
}


@pytest.mark.parametrize(("key", "default"), sorted(GATE_DEFAULTS.items()))
def test_default(key: str, default: object) -> None:
    settings = load_settings(None, BASE_ENV, {})
    assert getattr(settings, key) == default


def test_forward_client_token_defaults_to_true_in_gate() -> None:
    settings = load_settings(None, BASE_ENV, {})
    assert settings.forward_client_token is None
    assert settings.forward_client_token_effective is True


@pytest.mark.parametrize("key", ["upstream", "public_url"])
def test_required_keys(key: str) -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != f"MCP_SIDECAR_{key.upper()}"}
    with pytest.raises(ConfigError) as info:
        load_settings(None, env, {})
    problems = problems_of(info.value)
    assert key in problems
    assert "required" in problems[key]


# --- layering ----------------------------------------------------------------------------------------------


def test_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "upstream: http://127.0.0.1:1111\n"
        "public_url: https://file.example.com\n"
        "listen: 127.0.0.1:1001\n"
        "metrics_listen: 127.0.0.1:2001\n"
        "leeway_seconds: 11\n",
    )
    env = {
        "MCP_SIDECAR_LISTEN": "127.0.0.1:1002",
        "MCP_SIDECAR_METRICS_LISTEN": "127.0.0.1:2002",
    }
    flags = {"listen": "127.0.0.1:1003", "metrics_listen": None}
    s = load_settings(config, env, flags)
    assert s.listen == "127.0.0.1:1003"  # flag wins
    assert s.metrics_listen == "127.0.0.1:2002"  # env beats file (flag unset)
    assert s.leeway_seconds == 11  # file beats default
    assert s.upstream == "http://127.0.0.1:1111"
    assert s.backend_timeout_seconds == 30  # default


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path, "upstream: http://127.0.0.1:1\npublic_url: https://a.example.com\n")
    s = load_settings(None, {"MCP_SIDECAR_CONFIG": config}, {})
    assert s.public_url == "https://a.example.com"


@pytest.mark.parametrize(
    "value",
    ["mcp:read,mcp:write", " mcp:read , mcp:write ", '["mcp:read", "mcp:write"]', '  ["mcp:read","mcp:write"]'],
)
def test_env_lists_comma_or_json(value: str) -> None:
    s = load_settings(None, {**BASE_ENV, "MCP_SIDECAR_REQUIRED_SCOPES": value}, {})
    assert s.required_scopes == ["mcp:read", "mcp:write"]


def test_env_list_of_origins_and_servers() -> None:
    env = {
        **BASE_ENV,
        "MCP_SIDECAR_ALLOWED_ORIGINS": "https://a.example.com,https://b.example.com",
        "MCP_SIDECAR_AUTHORIZATION_SERVERS": '["https://idp.example.com"]',
    }
    s = load_settings(None, env, {})
    assert s.allowed_origins == ["https://a.example.com", "https://b.example.com"]
    assert s.authorization_servers == ["https://idp.example.com"]


def test_env_empty_list() -> None:
    assert load_settings(None, {**BASE_ENV, "MCP_SIDECAR_REQUIRED_SCOPES": ""}, {}).required_scopes == []


def test_env_broken_json_list_is_a_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {**BASE_ENV, "MCP_SIDECAR_REQUIRED_SCOPES": '["a",'}, {})
    assert "required_scopes" in problems_of(info.value)


def test_yaml_lists_and_typed_values(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "upstream: http://127.0.0.1:1\npublic_url: https://a.example.com\n"
        "required_scopes: [a, b]\nforward_client_token: false\nopaque_tokens: reject\nleeway_seconds: 0.5\n",
    )
    s = load_settings(config, {}, {})
    assert s.required_scopes == ["a", "b"]
    assert s.forward_client_token_effective is False
    assert s.leeway_seconds == 0.5


def test_env_booleans_and_numbers() -> None:
    env = {
        **BASE_ENV,
        "MCP_SIDECAR_FORWARD_CLIENT_TOKEN": "false",
        "MCP_SIDECAR_OPAQUE_TOKENS": "reject",
        "MCP_SIDECAR_BACKEND_TIMEOUT_SECONDS": "2.5",
        "MCP_SIDECAR_WORKERS": "3",
    }
    s = load_settings(None, env, {})
    assert s.forward_client_token is False
    assert s.backend_timeout_seconds == 2.5
    assert s.workers == 3


# --- problems ----------------------------------------------------------------------------------------------


def test_unknown_file_key_with_suggestion(tmp_path: Path) -> None:
    config = write(tmp_path, "upstrem: http://127.0.0.1:1\npublic_url: https://a.example.com\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, {"MCP_SIDECAR_UPSTREAM": "http://127.0.0.1:1"}, {})
    problems = problems_of(info.value)
    assert "did you mean 'upstream'" in problems["upstrem"]


def test_unknown_env_key_with_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {**BASE_ENV, "MCP_SIDECAR_LEEWAY_SECOND": "5"}, {})
    problem = problems_of(info.value)["leeway_second"]
    assert "MCP_SIDECAR_LEEWAY_SECOND" in problem
    assert "did you mean 'leeway_seconds'" in problem


def test_unknown_key_without_close_match_points_at_reference(tmp_path: Path) -> None:
    config = write(tmp_path, "upstream: http://127.0.0.1:1\npublic_url: https://a.example.com\nzzzz: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, {}, {})
    assert "configuration reference" in problems_of(info.value)["zzzz"]


def test_opaque_pass_with_forward_false_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {**BASE_ENV, "MCP_SIDECAR_FORWARD_CLIENT_TOKEN": "false"}, {})
    assert "opaque_tokens" in problems_of(info.value)
    # ... and reject together with forward false is fine.
    s = load_settings(
        None, {**BASE_ENV, "MCP_SIDECAR_FORWARD_CLIENT_TOKEN": "false", "MCP_SIDECAR_OPAQUE_TOKENS": "reject"}, {}
    )
    assert s.forward_client_token_effective is False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("upstream", "ftp://127.0.0.1:21"),
        ("upstream", "127.0.0.1:8000"),
        ("upstream", "not a url"),
        ("public_url", "https://mcp.example.com/?x=1"),
        ("public_url", "https://mcp.example.com/#frag"),
        ("public_url", "mcp.example.com"),
        ("jwks_url", "file:///etc/passwd"),
        ("allowed_origins", "https://app.example.com/path"),
        ("allowed_origins", "*"),
        ("authorization_servers", "idp.example.com"),
    ],
)
def test_bad_urls(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {**BASE_ENV, f"MCP_SIDECAR_{key.upper()}": value}, {})
    assert key in problems_of(info.value)


@pytest.mark.parametrize("value", ["8080", "host:99999", "host:abc", "host:", "localhost"])
@pytest.mark.parametrize("key", ["listen", "metrics_listen"])
def test_bad_listen(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {**BASE_ENV, f"MCP_SIDECAR_{key.upper()}": value}, {})
    assert key in problems_of(info.value)


@pytest.mark.parametrize("value", ["[::1]:8080", ":8080", "127.0.0.1:0"])
def test_good_listen(value: str) -> None:
    assert load_settings(None, {**BASE_ENV, "MCP_SIDECAR_LISTEN": value}, {}).listen == value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mode", "proxy"),
        ("opaque_tokens", "allow"),
        ("leeway_seconds", "-1"),
        ("leeway_seconds", "soon"),
        ("workers", "0"),
        ("backend_timeout_seconds", "0"),
        ("forward_client_token", "maybe"),
    ],
)
def test_bad_values(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {**BASE_ENV, f"MCP_SIDECAR_{key.upper()}": value}, {})
    assert key in problems_of(info.value)


def test_issuer_without_jwks_url() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {**BASE_ENV, "MCP_SIDECAR_ISSUER": "https://idp.example.com"}, {})
    assert "jwks_url" in problems_of(info.value)["issuer"]


def test_every_problem_at_once_with_their_sources(tmp_path: Path) -> None:
    config = write(tmp_path, "upstream: ftp://x\nleeway_secnds: 3\nlisten: nope\n")
    env = {"MCP_SIDECAR_OPAQUE_TOKENS": "sometimes", "MCP_SIDECAR_PUBLIC_URL": "https://a.example.com/?q"}
    with pytest.raises(ConfigError) as info:
        load_settings(config, env, {"workers": 0})
    problems = problems_of(info.value)
    assert {"leeway_secnds", "opaque_tokens", "workers"} <= set(problems)
    assert "MCP_SIDECAR_OPAQUE_TOKENS" in problems["opaque_tokens"]
    assert "command line" in problems["workers"]


def test_settings_can_be_built_directly() -> None:
    s = Settings(upstream="http://127.0.0.1:9", public_url="https://a.example.com/prefix/")
    assert str(s.public) == "https://a.example.com/prefix"
    assert str(s.upstream_url) == "http://127.0.0.1:9"


# --- the check-config command ------------------------------------------------------------------------------


def test_check_config_prints_every_problem_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(
        tmp_path,
        "upstream: ftp://backend\n"
        "public_url: not-a-url\n"
        "listen: localhost\n"
        "opaque_tokens: pass\n"
        "forward_client_token: false\n"
        "requird_scopes: [a]\n",
    )
    code = main(["check-config", "--config", config])
    assert code != 0
    err = capsys.readouterr().err
    for key in ("upstream", "public_url", "listen", "opaque_tokens", "requird_scopes"):
        assert f"- {key}" in err, f"{key} missing from:\n{err}"
    assert "did you mean 'required_scopes'" in err
    assert "5 configuration problem(s)" in err


def test_check_config_a_type_error_does_not_hide_the_other_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `listen: 8080` (a YAML integer) is a type error; the bad upstream URL and the unsafe
    # opaque_tokens/forward_client_token pair in the same file must still be reported in the same run.
    config = write(
        tmp_path,
        "upstream: ftp://backend\n"
        "public_url: https://mcp.example.com\n"
        "listen: 8080\n"
        "opaque_tokens: pass\n"
        "forward_client_token: false\n",
    )
    assert main(["check-config", "--config", config]) != 0
    err = capsys.readouterr().err
    for key in ("listen", "upstream", "opaque_tokens"):
        assert f"- {key}" in err, f"{key} missing from:\n{err}"


def test_check_config_missing_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) != 0
    err = capsys.readouterr().err
    assert "- upstream" in err and "- public_url" in err


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "upstream: http://127.0.0.1:8000\npublic_url: https://mcp.example.com\n")
    assert main(["check-config", "--config", config]) == 0
    assert "configuration OK" in capsys.readouterr().out


def test_check_config_reads_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MCP_SIDECAR_BACKEND_TIMEOUT_SECONDS", "-3")
    assert main(["check-config"]) != 0
    assert "backend_timeout_seconds" in capsys.readouterr().err


def test_unreadable_or_invalid_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "missing.yaml")]) != 0
    assert "cannot read the config file" in capsys.readouterr().err
    broken = write(tmp_path, "upstream: [unclosed\n")
    assert main(["check-config", "--config", broken]) != 0
    assert "not valid YAML" in capsys.readouterr().err
    listy = write(tmp_path, "- a\n- b\n")
    assert main(["check-config", "--config", listy]) != 0
    assert "YAML mapping" in capsys.readouterr().err


def test_serve_refuses_a_bad_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "upstream: ftp://backend\npublic_url: https://mcp.example.com\n")
    assert main(["serve", "--config", config, "--listen", "127.0.0.1:0"]) != 0
    assert "- upstream" in capsys.readouterr().err


def test_secrets_are_masked_in_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(
        tmp_path,
        "upstream: http://127.0.0.1:1\npublic_url: https://a.example.com\nredis_url: 42\n"
        "idp_client_secret: [hunter2-secret]\n",
    )
    assert main(["check-config", "--config", config]) != 0
    assert "hunter2-secret" not in capsys.readouterr().err
