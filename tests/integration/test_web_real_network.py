"""The chat page and the explorer in headless Chromium on the whole local network: the devnet
chain, two nodes running the real model, the relay and the gateway, as `veil up` runs them
(separate processes). The screenshot of a verified answer is the README's.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from support.browser import Browser, chromium
from support.net import until
from veil.commands.up import LocalNetwork, NetworkConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "In one sentence, why is the sky blue?"
README_SHOT = Path(__file__).resolve().parents[2] / "docs" / "web-chat.png"
# Set to refresh the README's screenshots in docs/ (else they go to test-artifacts/ only).
UPDATE_SHOTS = os.environ.get("WEB_README_SHOTS") == "1"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    settings = NetworkConfig(
        chain_port=0, node_ports=(0, 0), relay_port=0, gateway_port=0, win_prob=1.0
    )
    network = LocalNetwork(tmp_path_factory.mktemp("veil-home"), settings)
    try:
        network.start(Console(quiet=True))
        yield network
    finally:
        network.stop()


def test_chat_and_explorer_on_the_real_network(net: LocalNetwork) -> None:
    with chromium() as browser:
        _chat(net, browser)
        _explorer(net, browser)
        origin = net.gateway_url
        assert browser.requests
        assert [u for u in browser.requests if not u.startswith((origin, "blob:"))] == []


def _chat(net: LocalNetwork, browser: Browser) -> None:
    page: Any = browser.page()
    page.goto(net.gateway_url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector("#model option", state="attached")
    page.fill("#prompt", PROMPT)
    page.click("#send")
    page.wait_for_selector("#send:not([disabled])", timeout=180_000)
    answer = page.locator("article.assistant").last
    assert len(answer.locator(".body").inner_text().strip()) > 3
    panel = answer.locator("details.verification")
    assert panel.get_attribute("data-verdict") == "Receipt verified"
    panel.locator("summary").click()
    text = panel.inner_text()
    assert "dev; no hardware isolation" in text
    assert any(address in text for address in net.node_addresses.values())
    # veil up's gateway pays with anonymous tokens: the id the receipt names, checked
    assert re.search(r"Paid\s+1 anonymous token, payment 0x[0-9a-f]{64}", text), text
    shot = browser.screenshot(page, "chat-real-network.png")
    if UPDATE_SHOTS:
        shutil.copyfile(shot, README_SHOT)

    page.select_option("#mode", "tee")
    page.fill("#prompt", PROMPT)
    page.click("#send")
    page.wait_for_selector("#send:not([disabled])")
    refusal = page.locator("article.assistant").last.locator(".error-text").inner_text()
    assert "tee policy" in refusal and "403" in refusal
    history = net.data_dir / "chat-history.sqlite"
    assert PROMPT.encode() in history.read_bytes()
    assert history.stat().st_mode & 0o777 == 0o600
    page.close()


def _explorer(net: LocalNetwork, browser: Browser) -> None:
    page: Any = browser.page()
    page.goto(net.gateway_url + "/explorer")
    page.wait_for_selector("body[data-ready='1']")
    for address in net.node_addresses.values():
        row = page.locator("#nodes tbody tr", has_text=address)
        assert row.count() == 1
        assert "100" in row.inner_text()  # VEIL staked (NetworkConfig.stake)
    assert page.locator("#releases tbody tr").count() >= 1
    assert "approve" in page.locator("#releases").inner_text()
    # the winning ticket (win_prob 1) is redeemed by the node shortly after the answer
    assert until(lambda: page.locator("#redeemed tbody tr td.hash").count() > 0, timeout=60)
    shot = browser.screenshot(page, "explorer-real-network.png")
    if UPDATE_SHOTS:
        shutil.copyfile(shot, README_SHOT.with_name("web-explorer.png"))
    page.close()
