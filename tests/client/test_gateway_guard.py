"""The gateway serves only the user's own programs: no cross-origin page, no rebound name."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from veil.client.gateway.guard import RequestGuard, host_names_for

served: list[str] = []


async def _ok(request):  # type: ignore[no-untyped-def]
    served.append(request.url.path)
    return PlainTextResponse("ok")


INNER = Starlette(routes=[Route("/v1/chat/completions", _ok, methods=["POST", "GET"])])
URL = "http://127.0.0.1:8787/v1/chat/completions"
JSON = {"content-type": "application/json"}


@pytest.fixture(autouse=True)
def _reset() -> None:
    served.clear()


def _post(headers: dict[str, str], api_key: str | None = None, url: str = URL) -> httpx.Response:
    import asyncio

    async def go() -> httpx.Response:
        guard = RequestGuard(INNER, host_names=host_names_for("127.0.0.1"), api_key=api_key)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard)) as c:
            return await c.post(url, content=b"{}", headers=headers)

    return asyncio.run(go())


def test_a_local_json_post_passes() -> None:
    assert _post(JSON).status_code == 200
    assert _post({**JSON, "origin": "http://127.0.0.1:8787"}).status_code == 200
    assert served == ["/v1/chat/completions"] * 2


@pytest.mark.parametrize("media", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_a_simple_cross_site_post_is_refused(media: str) -> None:
    r = _post({"content-type": media} if media else {})
    assert r.status_code == 415
    assert r.json()["error"]["code"] == "unsupported_media_type"
    assert served == []


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://127.0.0.1:9999", "null", "http://localhost:8787"]
)
def test_another_origin_is_refused(origin: str) -> None:
    r = _post({**JSON, "origin": origin})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
    assert served == []


def test_sec_fetch_site_cross_site_is_refused() -> None:
    assert _post({**JSON, "sec-fetch-site": "cross-site"}).status_code == 403
    assert served == []


@pytest.mark.parametrize("host", ["evil.example:8787", "rebind.attacker.test", "10.0.0.5:8787"])
def test_a_rebound_host_name_is_refused(host: str) -> None:
    r = _post({**JSON, "host": host})
    assert r.status_code == 421 and r.json()["error"]["code"] == "host_not_allowed"
    assert served == []


@pytest.mark.parametrize("host", ["localhost:8787", "[::1]:8787", "127.0.0.1"])
def test_loopback_names_are_the_gateway(host: str) -> None:
    assert _post({**JSON, "host": host}).status_code == 200


def test_the_api_key_is_required_when_set() -> None:
    assert _post(JSON, api_key="s3cret").status_code == 401
    assert _post({**JSON, "authorization": "Bearer wrong"}, api_key="s3cret").status_code == 401
    assert _post({**JSON, "authorization": "Bearer s3cret"}, api_key="s3cret").status_code == 200
    assert served == ["/v1/chat/completions"]


def test_bound_address_is_a_host_name_but_wildcards_are_not() -> None:
    assert "192.168.1.20" in host_names_for("192.168.1.20")
    assert host_names_for("0.0.0.0") == host_names_for("127.0.0.1")


def test_a_gateway_bound_beyond_loopback_needs_an_api_key() -> None:
    from typer.testing import CliRunner

    from veil.cli import app

    result = CliRunner().invoke(
        app, ["gateway", "--relay", "http://127.0.0.1:1", "--host", "0.0.0.0"]
    )
    assert result.exit_code == 2
    assert "--api-key" in result.output
