"""SPU programs for the layers and the per-party executor that runs them on its shares.

Every party compiles the same programs per cache capacity from `veil.mpc.model.layers_step`:
`prefill` (fresh caches, the first BUCKET prompt tokens, left-padded), `step` (BUCKET more prompt
tokens, or one generated token) and `grow` (cache capacity + BUCKET). Weights and positions
are public inputs each party encodes itself; the hidden states, the KV cache and the padding
mask are secret. The caches are program outputs stored under the
same variable names the next step reads, so they never leave the parties between steps.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from veil.mpc.errors import BadShare, MpcConfigError, PartyFailure
from veil.mpc.model import BUCKET, LayerWeights, LlamaShape, layers_step, make_step_inputs

__all__ = [
    "PROTOCOLS",
    "MpcConfig",
    "PartyRuntime",
    "ShareCodec",
    "compile_program",
    "simulate_parties",
]

# protocol -> (world size, trust assumption); see docs/mpc.md
PROTOCOLS: dict[str, tuple[int, str]] = {
    "aby3": (3, "3 parties, honest majority: no two parties collude; no dealer"),
    "semi2k": (2, "2 parties, semi-honest; party 0 deals the multiplication triples (trusted)"),
    "cheetah": (2, "2 parties, semi-honest; triples from oblivious transfer / HE, no dealer"),
}

SECRET_INPUTS = {"hidden", "new_valid_secret", "k_cache", "v_cache", "valid"}


@dataclass(frozen=True)
class MpcConfig:
    """SPU protocol and fixed-point knobs; every party and the client must use the same."""

    protocol: str = "aby3"  # one of PROTOCOLS
    fxp_fraction_bits: int = 18  # fixed-point fraction bits in the 64-bit ring
    exp_mode: str = "taylor"  # SPU exp approximation: taylor | pade
    exp_iters: int = 8  # Taylor iterations (exp(x) ~ (1 + x/2^n)^(2^n))
    div_iters: int = 2  # Goldschmidt iterations of the softmax reciprocal
    # SPU's sigmoid: real (1/(1+exp)) | seg3 | mm1. Only an exact SiLU uses it
    # (`LlamaShape.silu == "exact"`); the parties' default SiLU is a polynomial (model.py).
    sigmoid_mode: str = "real"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise MpcConfigError(f"unknown protocol {self.protocol!r}; one of {sorted(PROTOCOLS)}")

    @property
    def world_size(self) -> int:
        return PROTOCOLS[self.protocol][0]

    def runtime_config(self) -> Any:
        from spu import libspu

        cfg = libspu.RuntimeConfig(
            protocol=getattr(libspu.ProtocolKind, self.protocol.upper()),
            field=libspu.FieldType.FM64,
        )
        cfg.fxp_fraction_bits = self.fxp_fraction_bits
        cfg.fxp_exp_mode = getattr(libspu.RuntimeConfig.ExpMode, f"EXP_{self.exp_mode.upper()}")
        cfg.fxp_exp_iters = self.exp_iters
        cfg.fxp_div_goldschmidt_iters = self.div_iters
        cfg.sigmoid_mode = getattr(
            libspu.RuntimeConfig.SigmoidMode, f"SIGMOID_{self.sigmoid_mode.upper()}"
        )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Program:
    """A compiled SPU program and the names of its inputs/outputs (variables on the parties)."""

    kind: str  # prefill | step | grow
    capacity: int  # KV-cache slots it reads (grow: the new capacity)
    new: int  # new tokens per run (prefill: BUCKET; step: 1 or BUCKET; grow: 0)
    executable: Any  # libspu.Executable
    inputs: tuple[str, ...]


def _weight_var(name: str) -> str:
    return f"w.{name}"


def _spec(shape: Sequence[int], dtype: Any = np.float32) -> Any:
    import jax

    return jax.ShapeDtypeStruct(tuple(shape), dtype)


_COMPILE_LOCK = threading.Lock()


def compile_program(shape: LlamaShape, kind: str, capacity: int, new: int = 0) -> Program:
    """Compile one program; every party does this itself, so no party runs another's code.

    Cached, and serialized by a lock so threads sharing a process compile each program once.
    """
    with _COMPILE_LOCK:
        return _compile_program(shape, kind, capacity, new)


@functools.lru_cache(maxsize=32)
def _compile_program(shape: LlamaShape, kind: str, capacity: int, new: int) -> Program:
    import jax.numpy as jnp
    from spu import libspu
    from spu.utils import frontend

    d, n = shape.hidden_size, BUCKET if kind == "prefill" else new
    cache = shape.cache_shape(capacity)
    specs: dict[str, Any] = {}
    if kind == "grow":
        old = shape.cache_shape(capacity - BUCKET)
        specs = {"k_cache": _spec(old), "v_cache": _spec(old), "valid": _spec(old[2:3])}

        def fn(x: dict[str, Any]) -> dict[str, Any]:
            pad = ((0, 0), (0, 0), (0, BUCKET), (0, 0))
            return {
                "k_cache": jnp.pad(x["k_cache"], pad),
                "v_cache": jnp.pad(x["v_cache"], pad),
                "valid": jnp.pad(x["valid"], (0, BUCKET)),
            }
    elif kind == "prefill" or (kind == "step" and new in (1, BUCKET)):
        w_specs = {_weight_var(k): _spec(v) for k, v in _weight_shapes(shape).items()}
        specs = {
            **w_specs,
            "hidden": _spec((n, d)),
            "start": _spec((), np.int32),
            "cos": _spec((n, shape.head_dim)),
            "sin": _spec((n, shape.head_dim)),
            "causal": _spec((n, capacity)),
            "diag": _spec((n, capacity)),
        }
        if kind == "prefill":
            specs["new_valid_secret"] = _spec((n,))
        else:
            specs.update(k_cache=_spec(cache), v_cache=_spec(cache), valid=_spec((capacity,)))

        def fn(x: dict[str, Any]) -> dict[str, Any]:
            weights = {k[2:]: v for k, v in x.items() if k.startswith("w.")}
            if kind == "prefill":
                kc = vc = jnp.zeros(cache, jnp.float32)
                valid, new_valid = jnp.zeros((capacity,), jnp.float32), x["new_valid_secret"]
            else:
                kc, vc, valid = x["k_cache"], x["v_cache"], x["valid"]
                new_valid = jnp.ones((n,), jnp.float32)
            out, kc, vc, valid = layers_step(
                shape, weights, x["hidden"], kc, vc, valid, new_valid,
                x["start"], x["cos"], x["sin"], x["causal"], x["diag"],
            )  # fmt: skip
            return {"out": out, "k_cache": kc, "v_cache": vc, "valid": valid}
    else:
        raise MpcConfigError(f"no program {kind!r} for {new} new tokens")

    names = sorted(specs)  # a dict argument flattens in key order
    vis = [
        libspu.Visibility.VIS_SECRET if nm in SECRET_INPUTS else libspu.Visibility.VIS_PUBLIC
        for nm in names
    ]
    fn.__name__ = f"veil_{kind}_{capacity}_{n}"
    executable, _ = frontend.compile(
        frontend.Kind.JAX,
        fn,
        [{k: specs[k] for k in names}],
        {},
        names,
        vis,
        lambda outs: sorted(["k_cache", "v_cache", "valid"] + ([] if kind == "grow" else ["out"])),
    )
    return Program(kind, capacity, n, executable, tuple(names))


def _weight_shapes(shape: LlamaShape) -> dict[str, tuple[int, ...]]:
    L, d, f = shape.num_layers, shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    return {
        "wq": (L, d, q),
        "wk": (L, d, kv),
        "wv": (L, d, kv),
        "wo": (L, q, d),
        "w_gate": (L, d, f),
        "w_up": (L, d, f),
        "w_down": (L, f, d),
    }


class ShareCodec:
    """Makes and checks shares; the same object serves the client (all ranks) and a party."""

    def __init__(self, settings: MpcConfig) -> None:
        import spu

        self.settings = settings
        self.world_size = settings.world_size
        self._io = spu.Io(self.world_size, settings.runtime_config())

    def secret(self, x: np.ndarray) -> list[Any]:
        """Fresh random shares of x, one per party."""
        from spu import libspu

        return self._io.make_shares(
            np.ascontiguousarray(x, np.float32), libspu.Visibility.VIS_SECRET
        )

    def public(self, x: np.ndarray, rank: int) -> Any:
        from spu import libspu

        return self._io.make_shares(np.asarray(x, order="C"), libspu.Visibility.VIS_PUBLIC)[rank]

    def reconstruct(self, shares: Sequence[Any]) -> np.ndarray:
        if len(shares) != self.world_size:
            raise BadShare(f"need {self.world_size} shares to reconstruct, got {len(shares)}")
        try:
            return np.asarray(self._io.reconstruct(list(shares)))
        except Exception as exc:  # SPU raises RuntimeError subclasses with C++ messages
            raise BadShare(f"shares do not reconstruct: {exc}") from exc

    @functools.lru_cache(maxsize=16)  # noqa: B019 - codecs live as long as the process
    def _template(self, shape: tuple[int, ...], rank: int) -> tuple[bytes, tuple[int, ...]]:
        s = self.secret(np.zeros(shape, np.float32))[rank]
        return bytes(s.meta), tuple(len(c) for c in s.share_chunks)

    def matches(self, share: Any, shape: tuple[int, ...], rank: int) -> bool:
        meta, chunks = self._template(shape, rank)
        got = tuple(len(c) for c in share.share_chunks)
        return bytes(share.meta) == meta and got == chunks

    def check(self, share: Any, shape: tuple[int, ...], rank: int) -> None:
        """Accept only a float32 secret share of exactly `shape` in this protocol's encoding."""
        if not self.matches(share, shape, rank):
            got = [len(c) for c in share.share_chunks]
            raise BadShare(
                f"share is not a float32 secret of shape {list(shape)} under "
                f"{self.settings.protocol} (meta {len(share.meta)} B, chunks {got} B)"
            )


def make_share(meta: bytes, chunks: Sequence[bytes]) -> Any:
    from spu import libspu

    s = libspu.Share()
    s.meta = meta
    s.share_chunks = list(chunks)
    return s


class PartyRuntime:
    """One party's state in one session: SPU runtime over its link, weights, secret caches."""

    def __init__(
        self,
        link: Any,
        settings: MpcConfig,
        shape: LlamaShape,
        weight_shares: dict[str, Any],
    ) -> None:
        import spu

        self.rank = link.rank  # the constructor below is collective: all parties at once
        self.shape = shape
        self.settings = settings
        self.codec = ShareCodec(settings)
        self.capacity = 0  # KV-cache slots held; 0 before prefill
        self.length = 0  # slots written
        self._rt: Any = spu.Runtime(link, settings.runtime_config())
        self._weight_names = tuple(weight_shares)
        for name, share in weight_shares.items():
            self._rt.set_var(_weight_var(name), share)
        self._lock = threading.Lock()

    def _set_public(self, inputs: dict[str, np.ndarray]) -> None:
        for name, value in inputs.items():
            self._rt.set_var(name, self.codec.public(value, self.rank))

    def _run(self, program: Program) -> None:
        try:
            self._rt.run(program.executable)
        except Exception as exc:  # link timeouts and peer deaths surface as RuntimeError
            raise PartyFailure(
                f"SPU {program.kind} run failed on party {self.rank}: {exc}"
            ) from exc

    def _step_public(self, start: int, new: int) -> None:
        si = make_step_inputs(self.shape, start, new, self.capacity)
        self._set_public(
            {"start": si.start, "cos": si.cos, "sin": si.sin, "causal": si.causal, "diag": si.diag}
        )

    def prefill(self, hidden: Any, new_valid: Any) -> Any:
        """Run the first BUCKET prompt rows (left-padded; `new_valid` secret) into fresh caches."""
        with self._lock:
            if self.capacity:
                raise BadShare("prefill twice in one session")
            self.codec.check(hidden, (BUCKET, self.shape.hidden_size), self.rank)
            self.codec.check(new_valid, (BUCKET,), self.rank)
            self.capacity = 2 * BUCKET
            self._rt.set_var("hidden", hidden)
            self._rt.set_var("new_valid_secret", new_valid)
            self._step_public(0, BUCKET)
            self._run(compile_program(self.shape, "prefill", self.capacity))
            self.length = BUCKET
            return self._rt.get_var("out")

    def step(self, hidden: Any) -> Any:
        """Append BUCKET more prompt tokens or one generated token ([n, D] secret share)."""
        with self._lock:
            if not self.capacity:
                raise BadShare("step before prefill")
            d = self.shape.hidden_size
            n = 1 if self.codec.matches(hidden, (1, d), self.rank) else BUCKET
            self.codec.check(hidden, (n, d), self.rank)
            while self.length + n > self.capacity:
                self.capacity += BUCKET
                self._run(compile_program(self.shape, "grow", self.capacity))
            self._rt.set_var("hidden", hidden)
            self._step_public(self.length, n)
            self._run(compile_program(self.shape, "step", self.capacity, n))
            self.length += n
            return self._rt.get_var("out")

    _VARS = ("hidden", "new_valid_secret", "k_cache", "v_cache", "valid", "out",
             "start", "cos", "sin", "causal", "diag")  # fmt: skip

    def close(self) -> None:
        """Wipe every variable (secret caches first, then weights) and drop the SPU runtime.

        SPU 0.9.5's wrapper has no working `clear()`, so variables are deleted by name.
        """
        if self._rt is None:
            return
        for name in (*self._VARS, *(_weight_var(n) for n in self._weight_names)):
            with contextlib.suppress(Exception):  # a variable never set in this session
                self._rt.del_var(name)
        self._rt = None
        self.capacity = self.length = 0


def public_weight_shares(codec: ShareCodec, weights: LayerWeights, rank: int) -> dict[str, Any]:
    """This party's encoding of the public weights (done once per process, reused by sessions)."""
    return {name: codec.public(w, rank) for name, w in weights.items()}


def simulate_parties(
    settings: MpcConfig,
    shape: LlamaShape,
    weights: LayerWeights,
) -> tuple[list[PartyRuntime], Callable[[Callable[[PartyRuntime], Any]], list[Any]]]:
    """In-process parties over SPU's in-memory links, one thread each: for fast tests only.

    Returns the runtimes and `all_do(f)`, which runs f on every party concurrently (SPU
    programs are collective, so every party must enter each run) and returns the results.
    """
    from concurrent.futures import ThreadPoolExecutor

    from spu import libspu

    world = settings.world_size
    desc = libspu.link.Desc()
    for r in range(world):
        desc.add_party(f"p{r}", f"mem_{r}")
    desc.recv_timeout_ms = 600_000  # a party thread may be compiling while the others wait
    codec = ShareCodec(settings)
    pool = ThreadPoolExecutor(world)
    links = list(pool.map(lambda r: libspu.link.create_mem(desc, r), range(world)))
    shares = public_weight_shares(codec, weights, 0)  # public: the same for every rank
    # constructing a runtime is collective (an all-gather over the link)
    parties = list(
        pool.map(lambda r: PartyRuntime(links[r], settings, shape, shares), range(world))
    )

    def all_do(f: Callable[[PartyRuntime], Any]) -> list[Any]:
        return list(pool.map(f, parties))

    return parties, all_do
