"""The web app's routes on the gateway: pages with a strict policy, the guarded history API
and the explorer's bounded read, over real loopback HTTP (no browser here: see
tests/integration/test_web_pages.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.gateway import MODEL, TOKEN, WEIGHTS, FakeChainReader
from support.net import ServerThread, free_port
from veil.client.gateway import GatewayConfig, create_gateway_app
from veil.client.web.routes import MAX_HISTORY_BODY
from veil.identity import NodeIdentity

JSON = {"content-type": "application/json"}
OPERATORS = [NodeIdentity.generate().address for _ in range(2)]


def _serve(tmp_path: Path, api_key: str | None = None) -> ServerThread:
    chain = FakeChainReader()
    for i, op in enumerate(OPERATORS):
        chain.register(op, [(MODEL, WEIGHTS)], (200 + i) * TOKEN)
    relay = f"http://127.0.0.1:{free_port()}"  # nothing listens: no node verifies
    config = GatewayConfig(api_key=api_key)
    app = create_gateway_app(chain, relay, config=config, history=tmp_path / "chat.sqlite")
    return ServerThread(app)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[ServerThread]:
    with _serve(tmp_path) as server:
        yield server


def test_pages_carry_a_strict_policy(gateway: ServerThread) -> None:
    for path, media in [
        ("/", "text/html"),
        ("/explorer", "text/html"),
        ("/static/chat.js", "text/javascript"),
        ("/static/app.css", "text/css"),
    ]:
        r = httpx.get(gateway.url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(media), path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    page = httpx.get(gateway.url + "/").text
    assert "<script>" not in page and "style=" not in page and "http" not in page
    for path in ["/static/index.html", "/static/../app.py", "/static/nothing.js"]:
        assert httpx.get(gateway.url + path).status_code == 404, path


def test_history_round_trip_and_delete(gateway: ServerThread, tmp_path: Path) -> None:
    conv = {"id": str(uuid.uuid4()), "title": "x", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(gateway.url + "/veil/history", json=conv)
    assert r.status_code == 200 and r.json()["id"] == conv["id"]
    listed = httpx.get(gateway.url + "/veil/history").json()
    assert listed["location"] == str((tmp_path / "chat.sqlite").resolve())
    assert [c["id"] for c in listed["conversations"]] == [conv["id"]]
    exported = httpx.get(gateway.url + "/veil/history/export")
    assert "attachment" in exported.headers["content-disposition"]
    assert exported.json()["conversations"][0]["messages"][0]["content"] == "hi"
    assert httpx.delete(f"{gateway.url}/veil/history/{conv['id']}").json() == {"deleted": 1}
    r = httpx.delete(f"{gateway.url}/veil/history/{conv['id']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.delete(f"{gateway.url}/veil/history/not-a-uuid").status_code == 400
    assert httpx.delete(gateway.url + "/veil/history").json() == {"deleted": 0}


def test_bad_history_input_gets_typed_errors_and_the_gateway_keeps_serving(
    gateway: ServerThread,
) -> None:
    url = gateway.url + "/veil/history"
    cases = [
        (b"{not json", 400, "invalid_json"),
        (b"[" * 10_000 + b"]" * 10_000, 400, "invalid_request"),
        (
            json.dumps({"messages": [{"role": "root", "content": "x"}]}).encode(),
            400,
            "invalid_conversation",
        ),
        (b" " * (MAX_HISTORY_BODY + 1), 413, "request_too_large"),
    ]
    for body, status, code in cases:
        r = httpx.post(url, content=body, headers=JSON)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    r = httpx.post(url, content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert httpx.get(url).json()["conversations"] == []


@pytest.mark.parametrize("path", ["/", "/static/chat.js", "/veil/history", "/veil/explorer"])
def test_other_origins_and_rebound_names_are_refused(gateway: ServerThread, path: str) -> None:
    r = httpx.get(gateway.url + path, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
    r = httpx.get(gateway.url + path, headers={"host": "rebind.evil.example"})
    assert r.status_code == 421
    r = httpx.get(gateway.url + path, headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403


def test_with_an_api_key_only_pages_are_served_without_it(tmp_path: Path) -> None:
    with _serve(tmp_path, api_key="s3cret") as server:
        assert httpx.get(server.url + "/").status_code == 200
        assert httpx.get(server.url + "/static/api.js").status_code == 200
        for path in ["/veil/history", "/veil/explorer", "/v1/models"]:
            r = httpx.get(server.url + path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        auth = {"authorization": "Bearer s3cret"}
        assert httpx.get(server.url + "/veil/history", headers=auth).status_code == 200


def test_explorer_lists_the_registry_and_says_what_it_could_not_read(
    gateway: ServerThread,
) -> None:
    data = httpx.get(gateway.url + "/veil/explorer", timeout=30).json()
    stakes = {n["address"]: n["stake"] for n in data["nodes"]}
    assert stakes == {OPERATORS[0]: str(200 * TOKEN), OPERATORS[1]: str(201 * TOKEN)}
    assert data["releases"] == [] and data["redeemed"] == []
    # the in-memory chain has no release log, ticket log or earnings: said, not hidden
    assert set(data["errors"]) == {"earnings", "releases", "redeemed"}


def test_a_gateway_without_history_says_so(tmp_path: Path) -> None:
    app = create_gateway_app(FakeChainReader(), f"http://127.0.0.1:{free_port()}")
    with ServerThread(app) as server:
        r = httpx.get(server.url + "/veil/history")
        assert r.status_code == 404 and r.json()["error"]["code"] == "history_off"


def test_every_static_file_is_served_and_packaged() -> None:
    import tomllib

    from veil.client.web import pages

    folder = Path(pages.__file__).parent / "static"
    on_disk = {p.name for p in folder.iterdir()}
    assert on_disk == set(pages._ASSETS)  # nothing stray, nothing missing
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "client/web/static/*" in pyproject["tool"]["setuptools"]["package-data"]["veil"]
