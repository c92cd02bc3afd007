"""Engine backends benchmark: builtin vs ctranslate2 (in process and as a node) vs CTranslate2
run directly with no Veil around it, on the packaged model, in one run.

Prints, per backend: tokens/s for one stream, aggregate tokens/s for 8 concurrent streams (for
CTranslate2 alone: its own static batch of the 8 prompts, its best case), and
the time to first token of a 50-token prompt (greedy, exactly `--tokens` tokens per stream);
then the ratios the targets are about (issue 16): the node on ctranslate2 against CTranslate2
alone (>= 0.95x), ctranslate2 against builtin for one stream (>= 3x), TTFT (< 100 ms).

    .venv/bin/python benchmarks/engines.py [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import httpx

from veil.engine import Engine, SamplingParams, TokenDelta, load_model
from veil.engine.ct2 import Ct2Engine, load_ct2_model

TEXT = (
    "Veil routes each request through an anonymizing relay to an independent node operator, "
    "encrypted end to end, so the relay never sees content and the node never sees who asked. "
    "Nodes stake tokens, sign receipts and are paid per request with probabilistic tickets."
)

# (prompt ids, tokens) -> (seconds to first token, total seconds, tokens streamed)
Stream = Callable[[list[int], int], tuple[float, float, int]]


def prompt_ids(tokenizer, n: int, shift: int = 0) -> list[int]:  # type: ignore[no-untyped-def]
    ids = tokenizer(TEXT * 4, add_special_tokens=False)["input_ids"]
    return ids[shift : shift + n]


def veil_stream(engine) -> Stream:  # type: ignore[no-untyped-def]
    def run(ids: list[int], tokens: int) -> tuple[float, float, int]:
        start, first = time.perf_counter(), None
        params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
        for event in engine.submit(ids, params):
            if isinstance(event, TokenDelta) and first is None:
                first = time.perf_counter() - start
        return first or 0.0, time.perf_counter() - start, tokens

    return run


def ct2_direct(model) -> Stream:  # type: ignore[no-untyped-def]
    """CTranslate2's own streaming loop on the same converted model: no Veil code at all."""

    def run(ids: list[int], tokens: int) -> tuple[float, float, int]:
        start, first, n = time.perf_counter(), None, 0
        pieces = model.tokenizer.convert_ids_to_tokens(ids)
        for _ in model.generator.generate_tokens(
            pieces, max_length=tokens, sampling_topk=1, end_token=[]
        ):
            n += 1
            if first is None:
                first = time.perf_counter() - start
        assert n == tokens
        return first or 0.0, time.perf_counter() - start, n

    return run


def ct2_direct_batch(model, prompts: list[list[int]], tokens: int) -> float:  # type: ignore[no-untyped-def]
    """Tokens/s of CTranslate2's own static batch of all `prompts` (its best case)."""
    pieces = [model.tokenizer.convert_ids_to_tokens(p) for p in prompts]
    start, n = time.perf_counter(), 0
    for _ in model.generator.generate_tokens(
        pieces, max_length=tokens, sampling_topk=1, end_token=[]
    ):
        n += 1
    assert n == tokens * len(prompts)
    return n / (time.perf_counter() - start)


def node_stream(url: str, tokenizer) -> Stream:  # type: ignore[no-untyped-def]
    """The node's HTTP API (plaintext, streaming), prompt given as text of `ids`; the answer
    may end before `tokens` (end of sequence): tokens/s counts what the usage says."""

    def run(ids: list[int], tokens: int) -> tuple[float, float, int]:
        text = tokenizer.decode(ids)
        body = {
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": text}],
            "stream": True,
            "temperature": 0,
            "max_tokens": tokens,
        }
        start, first, count = time.perf_counter(), None, 0
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if first is None and event["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - start
                if "usage" in event:
                    count = event["usage"]["completion_tokens"]
        return first or 0.0, time.perf_counter() - start, count

    return run


@contextlib.contextmanager
def serve_node(engine) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The node's app (no chain, no OHTTP keys) on a loopback port, in a thread."""
    import uvicorn

    from veil.node.api import create_app
    from veil.node.config import NodeConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = NodeConfig(max_tokens_limit=1024)
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine, config), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def concurrent(run: Stream, prompts: list[list[int]], tokens: int) -> float:
    barrier = threading.Barrier(len(prompts) + 1)
    counts: list[int] = []

    def worker(p: list[int]) -> None:
        barrier.wait()
        counts.append(run(p, tokens)[2])

    threads = [threading.Thread(target=worker, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def rate(run: Stream, ids: list[int], tokens: int) -> float:
    _, total, count = run(ids, tokens)
    return count / total


def measure(run: Stream, p50: list[int], prompts: list[list[int]], n: int, reps: int) -> tuple:  # type: ignore[type-arg]
    run(p50, 4)  # warm up
    one = statistics.median(rate(run, prompts[0], n) for _ in range(reps))
    eight = statistics.median(concurrent(run, prompts, n) for _ in range(reps))
    ttft = statistics.median(run(p50, 1)[0] for _ in range(max(5, reps)))
    return one, eight, ttft * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median kept)")
    args = parser.parse_args()
    n, reps = args.tokens, args.repeats
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; loading models...")

    ct2_model = load_ct2_model(progress=print)
    tok = ct2_model.tokenizer
    p50 = prompt_ids(tok, 50)
    prompts = [prompt_ids(tok, 40 + 3 * i, shift=i) for i in range(8)]
    rows = {}
    one, _, ttft = measure(ct2_direct(ct2_model), p50, prompts[:1], n, reps)
    eight = statistics.median(ct2_direct_batch(ct2_model, prompts, n) for _ in range(reps))
    rows["ctranslate2 alone (no Veil)"] = (one, eight, ttft)
    fast = Ct2Engine(ct2_model, max_batch=8)
    rows["ctranslate2 backend (in process)"] = measure(veil_stream(fast), p50, prompts, n, reps)
    with serve_node(fast) as url:
        rows["node on ctranslate2 (HTTP)"] = measure(node_stream(url, tok), p50, prompts, n, reps)
    fast.close()
    builtin = Engine(load_model(), max_batch=8)
    rows["builtin backend (in process)"] = measure(veil_stream(builtin), p50, prompts, n, reps)
    builtin.close()

    print(f"\n{'backend':36} {'1 stream tok/s':>15} {'8 streams tok/s':>16} {'TTFT 50 ms':>11}")
    for name, (one, eight, ttft) in rows.items():
        print(f"{name:36} {one:15.1f} {eight:16.1f} {ttft:11.1f}")
    alone = rows["ctranslate2 alone (no Veil)"]
    node = rows["node on ctranslate2 (HTTP)"]
    inproc = rows["ctranslate2 backend (in process)"]
    ref = rows["builtin backend (in process)"]
    print("\ntargets:")
    print(f"  node / CTranslate2 alone, 1 stream:     {node[0] / alone[0]:5.2f}x (>= 0.95)")
    print(f"  node / CTranslate2 alone, 8 streams:    {node[1] / alone[1]:5.2f}x")
    print(f"  ctranslate2 / builtin, 1 stream:        {inproc[0] / ref[0]:5.2f}x (>= 3)")
    print(f"  ctranslate2 / builtin, 8 streams:       {inproc[1] / ref[1]:5.2f}x")
    print(f"  node TTFT, 50-token prompt:             {node[2]:5.0f} ms (< 100)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
