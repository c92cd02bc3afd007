"""The upstream backend in front of a real, independently written OpenAI-compatible server:
`transformers serve` (Hugging Face's own server, installed with transformers) in a separate
process, on the packaged model saved as a Hugging Face directory, offline."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.net import ServerThread, free_port, wait_idle
from veil.engine import locate_model
from veil.engine.convert import save_dequantized
from veil.engine.upstream import UpstreamConfig, UpstreamEngine
from veil.node.api import create_app
from veil.node.config import NodeConfig

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
SECRET = "What is the capital of France? (private note 7731)"


class Served:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        cli = Path(sys.executable).parent / "transformers"
        args = [str(cli), "serve", str(folder), "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                health = f"http://127.0.0.1:{self.port}/health"  # its /v1/models needs a hub cache
                if httpx.get(health, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("transformers serve did not start")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("smollm2-hf")
    save_dequantized(locate_model(None), folder)
    return folder


@pytest.fixture(scope="module")
def upstream(hf_dir: Path) -> Iterator[Served]:
    served = Served(hf_dir)
    yield served
    served.stop()


def open_node(url: str, hf_dir: Path) -> tuple[UpstreamEngine, ServerThread]:
    config = UpstreamConfig(url=url, model=str(hf_dir), read_timeout_s=60, connect_timeout_s=2)
    engine = UpstreamEngine.open(config, hf_dir, MODEL)
    return engine, ServerThread(create_app(engine, NodeConfig()))


def events(response: httpx.Response) -> list[dict]:  # type: ignore[type-arg]
    return [
        json.loads(line[6:])
        for line in response.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def body(stream: bool, max_tokens: int = 8) -> dict:  # type: ignore[type-arg]
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": SECRET}],
        "stream": stream,
        "temperature": 0,
        "max_tokens": max_tokens,
    }


def test_streams_then_cancels_then_survives_the_upstream_dying(  # type: ignore[no-untyped-def]
    upstream: Served, hf_dir: Path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    engine, server = open_node(upstream.url, hf_dir)
    with server:
        # streaming: the model's answer, counted and signed by the node
        got = events(httpx.post(f"{server.url}/v1/chat/completions", json=body(True), timeout=120))
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in got if e["choices"])
        assert "Paris" in text
        assert got[-1]["usage"]["completion_tokens"] <= 8
        assert got[-1]["veil_receipt"]["model_hash"].removeprefix("0x") == engine.weights_sha256

        # cancel mid-stream: the client goes away after the first piece
        with httpx.stream(
            "POST", f"{server.url}/v1/chat/completions", json=body(True, 200), timeout=120
        ) as response:
            for line in response.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break
        wait_idle(engine, timeout=5)
        assert engine.stats.tokens_generated < 8 + 100

        # the upstream dies mid-answer: a typed error in the stream, then at once for the next
        with httpx.stream(
            "POST", f"{server.url}/v1/chat/completions", json=body(True, 200), timeout=120
        ) as response:
            lines = response.iter_lines()
            for line in lines:
                if '"content":"' in line and '"content":""' not in line:
                    upstream.stop()
                    break
            rest = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert rest[-1]["error"]["code"] == "upstream_unavailable"
        started = time.monotonic()
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=body(False), timeout=30)
        assert answer.status_code == 502
        assert answer.json()["error"]["code"] == "upstream_unavailable"
        assert time.monotonic() - started < 5
    engine.close()
    assert "France" not in caplog.text and "7731" not in caplog.text
