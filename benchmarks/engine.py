"""Engine benchmark: Veil's continuous-batching engine against plain `transformers.generate()`.

Prints, for the packaged model and in one run: tokens/s for one stream, aggregate tokens/s for
4 and 8 concurrent streams, time to first token for a 50-token prompt, and peak RSS; then the
same figures for `generate()` (static batches for 4 and 8) and the ratios the targets are about.

    .venv/bin/python benchmarks/engine.py [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import threading
import time

import torch

from veil.engine import Engine, SamplingParams, TokenDelta, load_model

TEXT = (
    "Veil routes each request through an anonymizing relay to an independent node operator, "
    "encrypted end to end, so the relay never sees content and the node never sees who asked. "
    "Nodes stake tokens, sign receipts and are paid per request with probabilistic tickets."
)


def prompt_ids(tokenizer, n: int, shift: int = 0) -> list[int]:  # type: ignore[no-untyped-def]
    ids = tokenizer(TEXT * 4, add_special_tokens=False)["input_ids"]
    return ids[shift : shift + n]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def veil_stream(engine: Engine, ids: list[int], tokens: int) -> tuple[float, float]:
    """(seconds to first token, total seconds) for one greedy stream of exactly `tokens`."""
    start = time.perf_counter()
    first = None
    for event in engine.submit(
        ids, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    ):
        if isinstance(event, TokenDelta) and first is None:
            first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


def veil_concurrent(engine: Engine, prompts: list[list[int]], tokens: int) -> float:
    """Aggregate tokens/s of len(prompts) streams submitted together."""
    barrier = threading.Barrier(len(prompts) + 1)

    def worker(ids: list[int]) -> None:
        barrier.wait()
        veil_stream(engine, ids, tokens)

    threads = [threading.Thread(target=worker, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return len(prompts) * tokens / (time.perf_counter() - start)


def hf_generate(model, tokenizer, prompts: list[list[int]], tokens: int) -> float:  # type: ignore[no-untyped-def]
    """Tokens/s of one static `generate()` batch (left-padded), greedy, exactly `tokens` each."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    elapsed = time.perf_counter() - start
    assert out.shape[1] - width == tokens
    return len(prompts) * tokens / elapsed


def hf_ttft(model, ids: list[int]) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=torch.tensor([ids]), max_new_tokens=1, do_sample=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median kept)")
    args = parser.parse_args()
    n, reps = args.tokens, args.repeats

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; loading model...")
    loaded = load_model()
    model, tok = loaded.model, loaded.tokenizer
    engine = Engine(loaded, max_batch=8)
    p50 = prompt_ids(tok, 50)
    prompts = [prompt_ids(tok, 40 + 3 * i, shift=i) for i in range(8)]

    # warm up both paths
    veil_stream(engine, p50, 8)
    hf_generate(model, tok, [p50], 8)

    def med(f):  # type: ignore[no-untyped-def]
        return statistics.median(f() for _ in range(reps))

    rows = []
    base_1 = med(lambda: hf_generate(model, tok, [prompts[0]], n))
    veil_1 = med(lambda: n / veil_stream(engine, prompts[0], n)[1])
    base_4 = med(lambda: hf_generate(model, tok, prompts[:4], n))
    veil_4 = med(lambda: veil_concurrent(engine, prompts[:4], n))
    base_8 = med(lambda: hf_generate(model, tok, prompts, n))
    veil_8 = med(lambda: veil_concurrent(engine, prompts, n))
    base_ttft = statistics.median(hf_ttft(model, p50) for _ in range(max(5, reps)))
    veil_ttft = statistics.median(veil_stream(engine, p50, 1)[0] for _ in range(max(5, reps)))
    engine.close()
    rows = [
        ("1 stream, tokens/s", veil_1, base_1),
        ("4 streams, aggregate tokens/s", veil_4, base_4),
        ("8 streams, aggregate tokens/s", veil_8, base_8),
        ("time to first token, 50-token prompt, ms", veil_ttft * 1000, base_ttft * 1000),
    ]
    print(f"\n{'figure':45} {'veil engine':>12} {'generate()':>12}")
    for name, ours, base in rows:
        print(f"{name:45} {ours:12.1f} {base:12.1f}")
    print(f"{'peak RSS of this process, MB':45} {peak_rss_mb():12.0f}")
    print("\ntargets:")
    print(f"  1 stream vs generate():         {veil_1 / base_1:5.2f}x  (target >= 0.9x)")
    print(f"  8 streams vs 1 stream (veil):   {veil_8 / veil_1:5.2f}x  (target >= 3x)")
    print(f"  time to first token:            {veil_ttft * 1000:5.0f} ms (target < 150 ms)")


if __name__ == "__main__":
    main()
