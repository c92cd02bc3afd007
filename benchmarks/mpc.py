"""MPC benchmark: SmolLM2-135M layers secret-shared across three party processes on loopback.

Measures, in one run: prefill time for a 32-token prompt, seconds per generated token, bytes
each party sends per token, and the same request in plaintext torch as a ratio. Also checks that
the MPC greedy tokens equal the plaintext ones.

    PYTHONPATH=src python benchmarks/mpc.py --tokens 8 [--protocol aby3] [--exp-mode taylor]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8, help="tokens to generate")
    ap.add_argument("--protocol", default="aby3")
    ap.add_argument("--exp-mode", default="taylor")
    ap.add_argument(
        "--sigmoid-mode", default="real", help="SPU's sigmoid (only an exact SiLU uses it)"
    )
    ap.add_argument("--fxp-bits", type=int, default=18)
    ap.add_argument("--model", default="smollm2", help="smollm2 or tiny:<seed>")
    ap.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = ap.parse_args()

    import torch

    from veil.mpc.client import RemoteSession, generate
    from veil.mpc.launch import start_parties
    from veil.mpc.model import BUCKET
    from veil.mpc.runtime import MpcConfig
    from veil.mpc.source import load_source

    settings = MpcConfig(
        protocol=args.protocol,
        exp_mode=args.exp_mode,
        sigmoid_mode=args.sigmoid_mode,
        fxp_fraction_bits=args.fxp_bits,
    )
    src = load_source(args.model)
    if src.tokenizer is not None:
        text = "Secret-shared inference keeps the prompt hidden from every single node. " * 4
        ids = src.tokenizer(text)["input_ids"][:BUCKET]
    else:
        ids = list(range(1, BUCKET + 1))
    assert len(ids) == BUCKET

    t0 = time.perf_counter()
    parties = start_parties(args.model, settings, Path(tempfile.mkdtemp(prefix="veil-mpc-bench-")))
    startup = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        session = RemoteSession([p.control for p in parties], settings, src.weights_sha256)
        open_s = time.perf_counter() - t0
        with session:
            t0 = time.perf_counter()
            tokens = list(generate(session, src.head, ids, args.tokens))
            total = time.perf_counter() - t0
            stats = session.stats
    finally:
        for p in parties:
            p.stop()

    prefill = stats[0]
    steps = [s for s in stats[1:] if s.op == "step"]
    per_token = [s.seconds for s in steps]
    written = np.array([s.party_written for s in steps], dtype=float)  # [steps, parties]

    plain_tokens: list[int] = []
    plain_prefill = plain_total = plain_per_token = float("nan")
    if src.torch_model is not None:
        torch.set_num_threads(2)
        x = torch.tensor([ids])
        with torch.no_grad():
            src.torch_model(x)  # warm-up
            t0 = time.perf_counter()
            out = src.torch_model(x, use_cache=True)
            plain_prefill = time.perf_counter() - t0
            step_s = []  # one cached decode step at a time, timed alone
            for _ in range(max(1, args.tokens - 1)):
                nxt = out.logits[0, -1].argmax().view(1, 1)
                t0 = time.perf_counter()
                out = src.torch_model(nxt, past_key_values=out.past_key_values, use_cache=True)
                step_s.append(time.perf_counter() - t0)
            plain_per_token = statistics.median(step_s)
            t0 = time.perf_counter()
            gen = src.torch_model.generate(x, max_new_tokens=args.tokens, do_sample=False)
            plain_total = time.perf_counter() - t0
        plain_tokens = gen[0, len(ids) :].tolist()

    result = {
        "model": args.model,
        "settings": settings.to_dict(),
        "prompt_tokens": len(ids),
        "generated_tokens": len(tokens),
        "party_startup_s": round(startup, 1),
        "session_open_s": round(open_s, 2),
        "prefill_s": round(prefill.seconds, 2),
        "s_per_token_mean": round(statistics.mean(per_token), 3) if per_token else None,
        "s_per_token_median": round(statistics.median(per_token), 3) if per_token else None,
        "bytes_sent_per_token_per_party": [int(v) for v in written.mean(axis=0)] if steps else [],
        "prefill_bytes_sent_per_party": prefill.party_written,
        "client_to_party_bytes_per_token": steps[0].sent_to_party[0] if steps else None,
        "mpc_total_s": round(total, 2),
        "plaintext_prefill_s": round(plain_prefill, 4),
        "plaintext_s_per_token": round(plain_per_token, 4),
        "plaintext_total_s": round(plain_total, 3),
        "ratio_total": round(total / plain_total, 1) if plain_total == plain_total else None,
        "ratio_per_token": round(statistics.mean(per_token) / plain_per_token, 1)
        if per_token and plain_per_token == plain_per_token
        else None,
        "mpc_tokens": tokens,
        "plaintext_tokens": plain_tokens,
        "tokens_identical": tokens == plain_tokens if plain_tokens else None,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
