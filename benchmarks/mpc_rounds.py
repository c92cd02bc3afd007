"""Where MPC decode time goes: link actions per layer, and what one link action costs here.

Two measurements, printed side by side:

1. One SmolLM2 decoder layer, one decode step (64-slot cache), in SPU's in-process simulation
   with its profiler on: link actions (messages each party sends, about one per communication
   round) and bytes per layer, for the exact SiLU (exponential + reciprocal) and for the
   polynomial SiLU the parties run (`veil.mpc.model.SILU_COEFFS`).
2. The cost of one link action between three party *processes* over brpc on loopback (the
   benchmark's and the tests' setting): a chain of secret multiplications, wall time divided by
   link actions, against the same chain with the three parties as threads over in-memory links.

    PYTHONPATH=src python benchmarks/mpc_rounds.py [--chain 400]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from veil.mpc.runtime import MpcConfig

_LINK = re.compile(r"Link details: total send bytes (\d+), recv bytes \d+, send actions (\d+)")


def _profiled(run: Callable[[], Any]) -> list[tuple[int, int]]:
    """Run `run` with the process's stdout (where SPU's profiler writes) sent to a file; return
    (bytes, actions) of each SPU execution that party 0.. logged."""
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            run()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return [(int(b), int(a)) for b, a in _LINK.findall(log.read())]


def layer_actions(silu: str) -> dict[str, float]:
    """Link actions and bytes per party of one SmolLM2 layer's decode step under ABY3."""
    from veil.mpc.local import SimSession
    from veil.mpc.model import BUCKET
    from veil.mpc.source import load_source

    src = load_source("smollm2")
    layer = 5
    shape = dataclasses.replace(
        src.shape,
        num_layers=1,
        norm_scales=src.shape.norm_scales[2 * layer : 2 * layer + 2],
        silu=silu,
    )
    weights = {k: v[layer : layer + 1] for k, v in src.weights.items()}
    settings = _Profiled()
    rng = np.random.default_rng(0)
    hidden = (rng.standard_normal((BUCKET, shape.hidden_size)) * 0.5).astype(np.float32)
    session = SimSession(shape, weights, settings)
    session.prefill(hidden, np.ones(BUCKET, np.float32))
    session.step(hidden[:1])  # compiles the step program
    stats = _profiled(lambda: session.step(hidden[:1]))
    session.close()
    return {
        "actions": float(np.mean([a for _, a in stats])),
        "bytes": float(np.mean([b for b, _ in stats])),
    }


class _Profiled(MpcConfig):
    """ABY3 with SPU's per-op profiler on (it logs each run's link totals)."""

    def runtime_config(self) -> Any:
        cfg = super().runtime_config()
        cfg.enable_pphlo_profile = True
        return cfg


# -- the cost of one link action ------------------------------------------------------------


def _chain(n: int) -> Callable[[Any], Any]:
    def fn(x: Any) -> Any:
        for _ in range(n):
            x = x * x * 0.5 + 0.5  # a secret product and a public one: each truncates
        return x

    return fn


def _runtime_config(profile: bool) -> Any:
    from spu import libspu

    cfg = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.ABY3, field=libspu.FieldType.FM64)
    cfg.fxp_fraction_bits = 18
    cfg.enable_pphlo_profile = profile
    return cfg


def _compile(n: int) -> tuple[Any, np.ndarray]:
    from spu import libspu
    from spu.utils import frontend

    x = np.full((16,), 0.3, np.float32)
    vis = [libspu.Visibility.VIS_SECRET]
    executable, _ = frontend.compile(
        frontend.Kind.JAX, _chain(n), [x], {}, ["x"], vis, lambda _: ["y"]
    )
    return executable, x


def _brpc_party(rank: int, ports: list[int], n: int, out: Any) -> None:
    import spu
    from spu import libspu

    desc = libspu.link.Desc()
    for r, port in enumerate(ports):
        desc.add_party(f"p{r}", f"127.0.0.1:{port}")
    link = libspu.link.create_brpc(desc, rank)
    executable, x = _compile(n)
    io = spu.Io(3, _runtime_config(False))
    shares = io.make_shares(x, libspu.Visibility.VIS_SECRET)
    profiled = spu.Runtime(link, _runtime_config(True))
    profiled.set_var("x", shares[rank])
    stats = _profiled(lambda: profiled.run(executable))
    rt = spu.Runtime(link, _runtime_config(False))
    rt.set_var("x", shares[rank])
    best = float("inf")
    for _ in range(3):
        link.barrier()
        t0 = time.perf_counter()
        rt.run(executable)
        best = min(best, time.perf_counter() - t0)
    out.put((rank, best, stats[-1][1] if stats else 0))


def brpc_action_ms(n: int) -> dict[str, float]:
    """Three party processes over brpc on loopback."""
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_brpc_party, args=(r, ports, n, out)) for r in range(3)]
    for p in procs:
        p.start()
    got = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    wall = max(g[1] for g in got)
    actions = max(g[2] for g in got)
    return {"wall_s": wall, "actions": actions, "ms_per_action": 1000 * wall / actions}


def memory_action_ms(n: int) -> dict[str, float]:
    """The same chain with the three parties as threads of this process (in-memory links)."""
    from concurrent.futures import ThreadPoolExecutor

    import spu
    from spu import libspu

    desc = libspu.link.Desc()
    for r in range(3):
        desc.add_party(f"p{r}", f"mem_{r}")
    pool = ThreadPoolExecutor(3)
    links = list(pool.map(lambda r: libspu.link.create_mem(desc, r), range(3)))
    executable, x = _compile(n)
    shares = spu.Io(3, _runtime_config(False)).make_shares(x, libspu.Visibility.VIS_SECRET)

    def runtimes(profile: bool) -> list[Any]:
        rts = list(pool.map(lambda r: spu.Runtime(links[r], _runtime_config(profile)), range(3)))
        for r, rt in enumerate(rts):
            rt.set_var("x", shares[r])
        return rts

    profiled = runtimes(True)
    stats = _profiled(lambda: list(pool.map(lambda rt: rt.run(executable), profiled)))
    plain = runtimes(False)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        list(pool.map(lambda rt: rt.run(executable), plain))
        best = min(best, time.perf_counter() - t0)
    actions = max(a for _, a in stats)
    return {"wall_s": best, "actions": actions, "ms_per_action": 1000 * best / actions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain", type=int, default=400, help="secret products in the chain")
    args = ap.parse_args()
    result: dict[str, Any] = {"layer": {}, "action_cost": {}}
    for silu in ("exact", "poly"):
        result["layer"][silu] = layer_actions(silu)
        print(f"one layer, decode step, silu={silu}: {result['layer'][silu]}", flush=True)
    result["action_cost"]["brpc_3_processes"] = brpc_action_ms(args.chain)
    result["action_cost"]["memory_3_threads"] = memory_action_ms(args.chain)
    for name, v in result["action_cost"].items():
        print(f"{name}: {v['ms_per_action']:.3f} ms per link action", flush=True)
    exact, poly = result["layer"]["exact"]["actions"], result["layer"]["poly"]["actions"]
    ms = result["action_cost"]["brpc_3_processes"]["ms_per_action"]
    result["predicted_s_per_token_30_layers"] = {
        "exact": round(30 * exact * ms / 1000, 2),
        "poly": round(30 * poly * ms / 1000, 2),
    }
    result["cpu_count"] = os.cpu_count()
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
