"""Endpoints mounted on the health server as Routes, and the station's HTTP token."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from edge_inspector.config.models import HealthConfig
from edge_inspector.errors import ConfigError
from edge_inspector.health.auth import load_token, presented_token, token_matches
from edge_inspector.health.server import HealthServer, Route, send

TOKEN = "s3cret-token"


def _request(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _echo(request, path, query):
    send(request, 200, "text/plain", f"{request.command} {path} {sorted(query)}".encode())


def _action(request, path, query):
    if not token_matches(presented_token(request, query), TOKEN):
        send(request, 401, "text/plain", b"token required\n")
        return
    send(request, 200, "text/plain", b"done\n")


@pytest.fixture
def server():
    routes = [Route("GET", "/files/", _echo), Route("GET", "/page", _echo), Route("POST", "/act", _action)]
    srv = HealthServer(CollectorRegistry(), host="127.0.0.1", port=0, routes=routes).start()
    yield srv
    srv.stop()


def test_prefix_route_matches_paths_under_it_and_gets_the_query(server):
    assert _request(server.url + "/files/a/b.png?x=1&y=2") == (200, "GET /files/a/b.png ['x', 'y']")


def test_exact_route_does_not_match_longer_paths(server):
    assert _request(server.url + "/page")[0] == 200
    assert _request(server.url + "/pages")[0] == 404
    assert _request(server.url + "/page/x")[0] == 404


def test_method_must_match(server):
    assert _request(server.url + "/act")[0] == 404
    assert _request(server.url + "/page", method="POST")[0] == 404


def test_built_in_endpoints_still_answer(server):
    assert _request(server.url + "/metrics")[0] == 200
    assert _request(server.url + "/healthz")[0] == 503  # no heartbeats attached: starting


@pytest.mark.parametrize("headers,suffix,code", [
    ({}, "", 401),
    ({"Authorization": "Bearer wrong"}, "", 401),
    ({"Authorization": f"Bearer {TOKEN}"}, "", 200),
    ({}, f"?token={TOKEN}", 200),
    ({}, "?token=", 401),
])
def test_action_needs_the_exact_token(server, headers, suffix, code):
    assert _request(server.url + "/act" + suffix, method="POST", headers=headers)[0] == code


def test_no_configured_token_matches_nothing():
    assert not token_matches("", None)
    assert not token_matches("anything", "")


def test_token_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("EI_TEST_TOKEN", TOKEN)
    assert load_token(HealthConfig(token_env="EI_TEST_TOKEN")) == TOKEN
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert load_token(HealthConfig(token_file=path)) == TOKEN
    path.write_text("")
    assert load_token(HealthConfig(token_file=path)) is None
    assert load_token(HealthConfig()) is None


@pytest.mark.parametrize("cfg,message", [
    (dict(token_env="EI_TEST_NOT_SET"), "health.token_env: environment variable EI_TEST_NOT_SET is not set"),
    (dict(token_env="X", token_file="/nonexistent/t"), "health.token_env and health.token_file are both set"),
    (dict(token_file="/nonexistent/t"), "health.token_file: cannot read /nonexistent/t"),
])
def test_token_errors_name_the_key(cfg, message, monkeypatch):
    monkeypatch.delenv("EI_TEST_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match=message):
        load_token(HealthConfig(**cfg))
