"""The chat page and the explorer in real headless Chromium, against the real gateway and
relay in front of paying fake nodes (the real OHTTP gateway and descriptors; their answers are
set per test, so hostile output and broken streams can be staged). The same pages on the
real model and devnet chain: test_web_real_network.py.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from support.browser import Browser, chromium
from support.gateway import MODEL, TOKEN, TOKENS, WEIGHTS, FakeChainReader, FakeNodeApi, approve
from support.net import ServerThread, until
from veil.client.gateway import GatewayConfig, create_gateway_app
from veil.client.payer import Wallet
from veil.identity import NodeIdentity
from veil.relay.app import RelayConfig, create_relay_app
from veil.relay.directory import Node, StaticNodeDirectory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "saffron-heron-3310: tell me a private thing"


class Net:
    """Two paying fake nodes, the relay, and the gateway (restartable on its port)."""

    def __init__(self, home: Path) -> None:
        self.chain = FakeChainReader()
        approve(self.chain)
        self.a, self.b = FakeNodeApi(), FakeNodeApi()
        self.nodes = [ServerThread(n.app).__enter__() for n in (self.a, self.b)]
        for i, node in enumerate((self.a, self.b)):
            self.chain.register(node.address, [(MODEL, WEIGHTS)], (200 + 50 * i) * TOKEN)
        directory = StaticNodeDirectory(
            [Node(n.address, s.url) for n, s in zip((self.a, self.b), self.nodes, strict=True)]
        )
        relay_app = create_relay_app(
            directory, RelayConfig(rate_per_s=1000, burst=1000, allow_private_endpoints=True)
        )
        self.relay = ServerThread(relay_app).__enter__()
        self.wallet = Wallet(NodeIdentity.generate().private_key)
        self.chain.deposits[self.wallet.address] = 5 * TOKEN
        self.history = home / "chat-history.sqlite"
        self.gateway: ServerThread | None = None
        self.port: int | None = None

    def start_gateway(self) -> ServerThread:
        app = create_gateway_app(
            self.chain,
            self.relay.url,
            wallet=self.wallet,
            config=GatewayConfig(),
            history=self.history,
        )
        self.gateway = ServerThread(app, port=self.port).__enter__()
        self.port = self.gateway.port
        return self.gateway

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.__exit__()
            self.gateway = None

    def close(self) -> None:
        self.stop_gateway()
        self.relay.__exit__()
        for server in self.nodes:
            server.__exit__()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    network = Net(tmp_path_factory.mktemp("home"))
    network.start_gateway()
    yield network
    network.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as found:
        yield found


@pytest.fixture(autouse=True)
def _reset(net: Net) -> None:
    for node in (net.a, net.b):
        node.knob = None
        node.tokens = list(TOKENS)
    if net.gateway is None:
        net.start_gateway()


def url(net: Net, path: str = "/") -> str:
    assert net.gateway is not None
    return net.gateway.url + path


def open_chat(net: Net, browser: Browser) -> Any:
    page = browser.page()
    page.goto(url(net))
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector("#model option", state="attached")
    return page


def ask(page: Any, prompt: str, mode: str = "anonymous") -> Any:
    page.select_option("#mode", mode)
    page.fill("#prompt", prompt)
    page.click("#send")
    page.wait_for_selector("#send:not([disabled])")  # the answer ended
    return page.locator("article.assistant").last


def test_answer_streams_in_with_a_verified_receipt_panel(net: Net, browser: Browser) -> None:
    for node in (net.a, net.b):
        node.knob = "slow"  # a tenth of a second between tokens: the page shows it growing
    page = open_chat(net, browser)
    page.select_option("#mode", "anonymous")
    page.fill("#prompt", "stream it")
    page.click("#send")
    seen: set[str] = set()
    assert until(lambda: seen.add(_answer_text(page)) or len(seen - {""}) >= 3, timeout=20)
    page.wait_for_selector("#send:not([disabled])")
    answer = page.locator("article.assistant").last
    assert answer.locator(".body").inner_text().strip() == "".join(TOKENS)
    panel = answer.locator("details.verification")
    assert panel.get_attribute("data-verdict") == "Receipt verified"
    panel.locator("summary").click()
    text = panel.inner_text()
    assert "no hardware isolation" in text
    assert net.a.address in text or net.b.address in text
    assert re.search(r"Paid\s+ticket 0x[0-9a-f]{64}", text), text
    assert "Receipt id" in text
    assert page.input_value("#prompt") == ""
    browser.screenshot(page, "chat-fake-nodes.png")
    page.close()


def _answer_text(page: Any) -> str:
    found = page.locator("article.assistant .body")
    return found.last.inner_text() if found.count() else ""


def test_tee_is_refused_with_the_gateways_reason(net: Net, browser: Browser) -> None:
    page = open_chat(net, browser)
    answer = ask(page, "anything", mode="tee")
    assert "satisfies the tee policy" in answer.locator(".error-text").inner_text()
    assert answer.locator("details").get_attribute("data-verdict") == "Not answered"
    assert not net.a.seen[-1:] or "anything" not in str(net.a.seen[-1])
    page.close()


def test_history_survives_a_reload_and_delete_removes_it_from_disk(
    net: Net, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    page = open_chat(net, browser)
    page.click("#new-chat")
    ask(page, PROMPT)
    assert PROMPT.encode() in net.history.read_bytes()
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    item = page.locator("#conversations li", has_text=PROMPT[:30])
    assert item.count() == 1
    item.locator("button.open").click()
    assert PROMPT in page.locator("article.user").first.inner_text()
    assert "Receipt verified" in page.locator("details.verification").last.inner_text()
    where = page.locator("#history-where").inner_text()
    assert str(net.history.resolve()) in where and "only on this machine" in where
    item.locator("button.remove").click()
    assert until(lambda: "saffron" not in page.locator("#conversations").inner_text(), timeout=10)
    assert PROMPT.encode() not in net.history.read_bytes()
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert PROMPT not in page.locator("body").inner_text()
    page.close()
    assert caplog.records and PROMPT not in caplog.text and "".join(TOKENS) not in caplog.text


def test_export_downloads_every_conversation_as_json(net: Net, browser: Browser) -> None:
    page = open_chat(net, browser)
    page.click("#new-chat")
    ask(page, "export me")
    with page.expect_download() as download:
        page.click("#export")
    exported = json.loads(Path(download.value.path()).read_text())
    assert download.value.suggested_filename == "veil-chat-history.json"
    asked = [c for c in exported["conversations"] if c["messages"][0]["content"] == "export me"]
    assert len(asked) == 1
    assert asked[0]["messages"][1]["meta"]["receipt"] == "verified"
    page.close()


def test_stop_marks_the_answer_incomplete_and_regenerate_asks_again(
    net: Net, browser: Browser
) -> None:
    for node in (net.a, net.b):
        node.knob = "slow"
        node.tokens = [f" word{i}" for i in range(40)]
    page = open_chat(net, browser)
    page.click("#new-chat")
    page.fill("#prompt", "a long answer please")
    page.click("#send")
    assert until(lambda: "word2" in _answer_text(page), timeout=20)
    page.click("#stop")
    page.wait_for_selector("#send:not([disabled])")
    answer = page.locator("article.assistant").last
    assert "incomplete: stopped" in answer.locator(".incomplete").inner_text()
    assert "word39" not in _answer_text(page)
    for node in (net.a, net.b):
        node.knob = None
    answer.locator("button.regenerate").click()
    page.wait_for_selector("#send:not([disabled])")
    assert page.locator("article.assistant").count() == 1
    assert "word39" in _answer_text(page)
    verdict = page.locator("article.assistant details").get_attribute("data-verdict")
    assert verdict == "Receipt verified"
    page.close()


def test_hostile_model_output_renders_as_text(net: Net, browser: Browser) -> None:
    hostile = [
        "<script>window.veilPwned = 1</script>",
        ' <img src=x onerror="window.veilPwned = 2">',
        "\n\n```html\n<b>not bold</b>\n```\n",
        "and `<i>code</i>` and **bold**",
    ]
    for node in (net.a, net.b):
        node.tokens = hostile
    page = open_chat(net, browser)
    page.click("#new-chat")
    answer = ask(page, "say something hostile")
    body = answer.locator(".body")
    assert "<script>window.veilPwned = 1</script>" in body.inner_text()
    assert '<img src=x onerror="window.veilPwned = 2">' in body.inner_text()
    assert body.locator("script, img, b, i").count() == 0
    assert body.locator("pre code").inner_text() == "<b>not bold</b>"
    assert body.locator("strong").inner_text() == "bold"
    assert page.evaluate("window.veilPwned") is None
    assert answer.locator("details").get_attribute("data-verdict") == "Receipt verified"
    page.close()


def test_a_stream_that_breaks_marks_the_answer_incomplete(net: Net, browser: Browser) -> None:
    for node in (net.a, net.b):
        node.knob = "midstream"
    page = open_chat(net, browser)
    page.click("#new-chat")
    answer = ask(page, "break please")
    assert "This answer is incomplete" in answer.locator(".incomplete").inner_text()
    assert answer.locator("details").get_attribute("data-verdict") == (
        "Incomplete answer: not verified"
    )
    page.close()


def test_a_huge_prompt_gets_the_gateways_size_error(net: Net, browser: Browser) -> None:
    page = open_chat(net, browser)
    page.click("#new-chat")
    page.evaluate("document.querySelector('#prompt').value = 'x'.repeat(1100000)")
    page.click("#send")
    page.wait_for_selector("#send:not([disabled])")
    error = page.locator("article.assistant .error-text").last.inner_text()
    assert "exceeds" in error and "413" in error and "request_too_large" in error
    page.close()


def test_a_gateway_that_is_down_shows_a_banner_retries_and_keeps_the_prompt(
    net: Net, browser: Browser
) -> None:
    page = open_chat(net, browser)
    page.click("#new-chat")
    net.stop_gateway()
    page.fill("#prompt", "a prompt typed while the gateway restarts")
    page.click("#send")
    page.wait_for_selector("#banner:not([hidden])")
    assert "cannot be reached" in page.locator("#banner").inner_text()
    assert page.input_value("#prompt") == "a prompt typed while the gateway restarts"
    browser.screenshot(page, "chat-gateway-down.png")
    net.start_gateway()
    banner = page.locator("#banner")
    assert until(lambda: banner.is_hidden() or "back" in banner.inner_text(), timeout=30)
    assert page.input_value("#prompt") == "a prompt typed while the gateway restarts"
    answer = ask(page, page.input_value("#prompt"))
    assert answer.locator("details").get_attribute("data-verdict") == "Receipt verified"
    page.close()


def test_a_page_on_another_origin_cannot_call_the_gateway(net: Net, browser: Browser) -> None:
    async def blank(_: Any) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>elsewhere</title>")

    before = httpx.get(url(net, "/veil/history")).json()["conversations"]
    with ServerThread(Starlette(routes=[Route("/", blank)])) as other:
        page = browser.page()
        page.goto(other.url.replace("127.0.0.1", "localhost") + "/")
        outcome = page.evaluate(
            """async (gw) => {
              const out = {};
              try { await (await fetch(gw + '/veil/history')).json(); out.read = 'read'; }
              catch (e) { out.read = 'blocked'; }
              const conv = JSON.stringify({id: crypto.randomUUID(), title: 'evil', messages: []});
              try {
                const r = await fetch(gw + '/veil/history', {method: 'POST', mode: 'no-cors',
                  headers: {'content-type': 'text/plain'}, body: conv});
                out.write = r.type;
              } catch (e) { out.write = 'blocked'; }
              try {
                await fetch(gw + '/veil/history', {method: 'DELETE', mode: 'no-cors'});
                out.del = 'sent';
              } catch (e) { out.del = 'blocked'; }
              return out;
            }""",
            url(net),
        )
        page.close()
    assert outcome["read"] == "blocked"
    assert outcome["del"] == "blocked"
    assert httpx.get(url(net, "/veil/history")).json()["conversations"] == before


def test_the_explorer_lists_both_nodes_with_their_stake(net: Net, browser: Browser) -> None:
    page = browser.page()
    page.goto(url(net, "/explorer"))
    page.wait_for_selector("body[data-ready='1']")
    rows = page.locator("#nodes tbody tr")
    assert rows.count() == 2
    text = page.locator("#nodes").inner_text()
    for node, stake in ((net.a, "200"), (net.b, "250")):
        row = page.locator("#nodes tbody tr", has_text=node.address)
        assert row.count() == 1 and stake in row.inner_text()
    assert page.locator("#nodes button.copy").count() == 2
    assert "up" in text
    first = page.locator("#updated").inner_text()
    assert until(lambda: page.locator("#updated").inner_text() != first, timeout=15)
    browser.screenshot(page, "explorer-fake-nodes.png")
    page.close()


def test_the_pages_request_nothing_but_their_own_origin(net: Net, browser: Browser) -> None:
    """Every request the browser made in this module (the other-origin page's own load
    aside), this test's chat and explorer visits included."""
    page = open_chat(net, browser)
    ask(page, "one more")
    page.goto(url(net, "/explorer"))
    page.wait_for_selector("body[data-ready='1']")
    page.close()
    origin = url(net, "")
    other = [u for u in browser.requests if not u.startswith((origin, "blob:", "data:"))]
    other = [u for u in other if not u.startswith("http://localhost:")]  # the other-origin test
    assert any(u.startswith(origin + "/v1/chat/completions") for u in browser.requests)
    assert any(u.startswith(origin + "/veil/explorer") for u in browser.requests)
    assert other == []
