"""The Llama (SmolLM2) transformer layers as one pure JAX function, the part that runs under MPC.

The client keeps the embedding table, the final norm and the LM head (all public weights), so
token ids never leave it; only the stack of decoder layers runs on secret-shared hidden states.
Shapes are static per (new tokens, cache capacity) bucket so one SPU program serves every step
of that bucket; positions, rotary tables and the attention mask are public inputs because the
parties learn the sequence length anyway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "BUCKET",
    "LayerWeights",
    "LlamaShape",
    "StepInputs",
    "calibrate_norm_scales",
    "extract_weights",
    "fold_norms",
    "layers_step",
    "make_step_inputs",
    "random_weights",
    "rotary_tables",
]

BUCKET = 32  # prompt and KV-cache lengths are padded to multiples of this
MASK_FLOOR = -30.0  # masked scores are pushed to this before the max, so they never win it

# SiLU for MPC (`silu="poly"`): silu(x) = (x + h(x)) / 2 with h(x) = x * tanh(x / 2), which is
# even and tends to |x|. Inside |x| <= SILU_EDGE, h is this degree-7 polynomial in
# z = (x / SILU_EDGE)^2 (least squares, weighted towards small |x|: max error of silu 0.0011);
# outside, h = |x| (error at most 0.034, at the edge). Under SPU that is three rounds of
# products and one comparison instead of an exponential and a reciprocal (about 50 fewer
# communication rounds per layer, see docs/benchmarks.md). The constants are literals so that
# every party compiles exactly the same program.
SILU_EDGE = 5.0
SILU_COEFFS = (
    8.28779654e-05, 12.4712707, -25.0343129, 52.5075905,
    -83.6579312, 87.277308, -51.4785456, 12.8497542,
)  # fmt: skip
SILU_MODES = ("poly", "exact")

LayerWeights = dict[str, np.ndarray]  # name -> [L, ...] stacked over layers, norms folded, public


@dataclass(frozen=True)
class LlamaShape:
    """The dimensions of a Llama decoder stack (what the SPU program's shapes depend on)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_eps: float
    rope_theta: float
    # public per-norm input scales (attn, mlp per layer), powers of 2; empty means all 1. See
    # `calibrate_norm_scales`: they keep x*x inside the fixed-point range under MPC.
    norm_scales: tuple[float, ...] = ()
    # the MLP's SiLU: `poly` (the piecewise polynomial above, the MPC default: about 50 fewer
    # rounds per layer) or `exact` (jax.nn.silu, an exponential and a reciprocal under MPC)
    silu: str = "poly"

    def __post_init__(self) -> None:
        if self.silu not in SILU_MODES:
            raise ValueError(f"silu must be one of {SILU_MODES}, not {self.silu!r}")

    def norm_scale(self, layer: int, which: int) -> float:
        return self.norm_scales[2 * layer + which] if self.norm_scales else 1.0

    @classmethod
    def from_hf(cls, config: Any) -> LlamaShape:
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        rope_theta = getattr(config, "rope_theta", None)
        if rope_theta is None:  # transformers 5 keeps it in rope_parameters
            rope_theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            rms_eps=float(config.rms_norm_eps),
            rope_theta=float(rope_theta),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cache_shape(self, capacity: int) -> tuple[int, int, int, int]:
        """[layers, kv heads, capacity, head dim] of the K (or V) cache."""
        return (self.num_layers, self.num_kv_heads, capacity, self.head_dim)


_WEIGHT_NAMES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def fold_norms(shape: LlamaShape, raw: dict[str, np.ndarray]) -> LayerWeights:
    """Fold each RMSNorm weight (and attention's 1/sqrt(head_dim)) into the next matmuls.

    Done once in numpy: inside SPU a public-public product of big matrices is slow (fixed-point
    ring arithmetic, ~0.4 s per layer), while the folded weights cost nothing per step.
    """
    an, mn = raw["attn_norm"][:, :, None], raw["mlp_norm"][:, :, None]
    c = np.float32(1.0 / np.sqrt(shape.head_dim))
    folded = {
        "wq": raw["wq"] * an * c,
        "wk": raw["wk"] * an,
        "wv": raw["wv"] * an,
        "wo": raw["wo"],
        "w_gate": raw["w_gate"] * mn,
        "w_up": raw["w_up"] * mn,
        "w_down": raw["w_down"],
    }
    return {n: np.ascontiguousarray(v, dtype=np.float32) for n, v in folded.items()}


def extract_weights(torch_model: Any) -> tuple[LlamaShape, LayerWeights]:
    """Stack a transformers Llama model's decoder weights as float32 numpy ([in, out]), with
    the norms folded in (`fold_norms`)."""
    shape = LlamaShape.from_hf(torch_model.config)
    per: dict[str, list[np.ndarray]] = {n: [] for n in ("attn_norm", "mlp_norm", *_WEIGHT_NAMES)}
    for layer in torch_model.model.layers:
        a, m = layer.self_attn, layer.mlp
        tensors = {
            "attn_norm": layer.input_layernorm.weight,
            "wq": a.q_proj.weight.T,
            "wk": a.k_proj.weight.T,
            "wv": a.v_proj.weight.T,
            "wo": a.o_proj.weight.T,
            "mlp_norm": layer.post_attention_layernorm.weight,
            "w_gate": m.gate_proj.weight.T,
            "w_up": m.up_proj.weight.T,
            "w_down": m.down_proj.weight.T,
        }
        for name, t in tensors.items():
            per[name].append(t.detach().float().contiguous().numpy())
    return shape, fold_norms(shape, {n: np.stack(v) for n, v in per.items()})


def random_weights(shape: LlamaShape, seed: int = 0) -> LayerWeights:
    """Random weights of roughly the trained model's scale, for tiny test configurations."""
    rng = np.random.default_rng(seed)
    d, f, hd = shape.hidden_size, shape.intermediate_size, shape.head_dim
    q, kv = shape.num_heads * hd, shape.num_kv_heads * hd

    def mat(i: int, o: int) -> np.ndarray:
        return (rng.standard_normal((shape.num_layers, i, o)) / np.sqrt(i)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal((shape.num_layers, d))).astype(np.float32)

    return fold_norms(shape, {
        "attn_norm": norm(),
        "wq": mat(d, q),
        "wk": mat(d, kv),
        "wv": mat(d, kv),
        "wo": mat(q, d),
        "mlp_norm": norm(),
        "w_gate": mat(d, f),
        "w_up": mat(d, f),
        "w_down": mat(f, d),
    })  # fmt: skip


def rotary_tables(shape: LlamaShape, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, [S, head_dim], for the given positions (HF's rotate-half layout)."""
    hd = shape.head_dim
    inv_freq = 1.0 / (shape.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    freqs = np.outer(positions.astype(np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


@dataclass(frozen=True)
class StepInputs:
    """The public inputs of one step besides weights: where the new tokens go and what they see."""

    start: np.ndarray  # int32 scalar: cache slot of the first new token
    cos: np.ndarray  # [S, head_dim] float32
    sin: np.ndarray  # [S, head_dim] float32
    causal: np.ndarray  # [S, capacity] float32, 1 where slot j <= the query's slot
    diag: np.ndarray  # [S, capacity] float32, 1 on the query's own slot


def make_step_inputs(shape: LlamaShape, start: int, new: int, capacity: int) -> StepInputs:
    """Public inputs for `new` tokens in cache slots start.. of a cache of `capacity` slots.

    Rotary positions are the slot indices: prompts are left-padded to the bucket, and rotary
    attention depends only on relative positions, so the padding shifts nothing. Which slots
    hold padding is secret (the `valid` vector), so parties learn the bucket, not the length.
    """
    slots = np.arange(start, start + new)
    cos, sin = rotary_tables(shape, slots)
    cols = np.arange(capacity)[None, :]
    causal = (cols <= slots[:, None]).astype(np.float32)
    diag = (cols == slots[:, None]).astype(np.float32)
    return StepInputs(np.asarray(start, dtype=np.int32), cos, sin, causal, diag)


def _rms_norm(x: Any, eps: float, inv_scale: Any) -> Any:
    """RMSNorm of x * inv_scale (which equals RMSNorm of x, eps scaled along), without its
    weight: the caller folds that into the next matmul's public weights (one product less).

    Llama's residual stream has "massive activations" (|x| ~ 25,000 at the first token in
    SmolLM2's later layers); x*x in 64-bit fixed point with 18 fraction bits overflows above
    about 11,600, and SPU's rsqrt is only accurate below about 1e5. A public power-of-two
    scale keeps both in range without touching the result.
    """
    import jax
    import jax.numpy as jnp

    x = x * inv_scale
    var = jnp.mean(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(var + eps * inv_scale * inv_scale)


def _silu(x: Any, mode: str) -> Any:
    """SiLU, exact (`jax.nn.silu`) or as the piecewise polynomial above (`poly`)."""
    import jax
    import jax.numpy as jnp

    if mode == "exact":
        return jax.nn.silu(x)
    y = x * x
    z = y * (1.0 / (SILU_EDGE * SILU_EDGE))
    z2 = z * z
    # batched so each level of products is one multiplication (one round) under SPU
    z3, z4 = jnp.stack([z2, z2]) * jnp.stack([z, z2])
    z5, z6, z7 = jnp.stack([z4, z3, z4]) * jnp.stack([z, z3, z3])
    coeffs = jnp.asarray(SILU_COEFFS[1:], dtype=x.dtype)
    g = SILU_COEFFS[0] + jnp.tensordot(coeffs, jnp.stack([z, z2, z3, z4, z5, z6, z7]), axes=1)
    # one comparison for both tests: x < 0, and x^2 > edge^2 (outside the polynomial's range)
    negative = jnp.stack([x, SILU_EDGE * SILU_EDGE - y]) < 0
    h = jnp.where(negative[1], jnp.where(negative[0], -x, x), g)
    return 0.5 * (x + h)


def _rotate(x: Any, cos: Any, sin: Any) -> Any:
    """Rotary embedding; x is [heads, S, head_dim], cos/sin [S, head_dim] (public)."""
    import jax.numpy as jnp

    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _masked_softmax(scores: Any, mask: Any) -> Any:
    """Softmax over the last axis with a 0/1 mask (secret: it hides which slots are padding).

    Masked scores are moved to MASK_FLOOR before taking the max (so padding or future slots
    never set it) and their exponentials are zeroed exactly.
    """
    import jax.numpy as jnp

    s = (scores - MASK_FLOOR) * mask + MASK_FLOOR  # one secret product, no public one
    s = s - jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s) * mask
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _layer(
    shape: LlamaShape,
    w: dict[str, Any],
    inv_scale: Any,
    x: Any,
    kc: Any,
    vc: Any,
    start: Any,
    cos: Any,
    sin: Any,
    mask: Any,
    probe: list[tuple[Any, Any]] | None,
) -> tuple[Any, Any, Any]:
    """One decoder layer; kc/vc [KVH, T, hd] get the new keys/values at `start`."""
    import jax
    import jax.numpy as jnp

    s_len = x.shape[0]
    h, kvh, hd = shape.num_heads, shape.num_kv_heads, shape.head_dim
    group = h // kvh
    zero = jnp.zeros((), dtype=jnp.int32)
    if probe is not None:
        probe.append((jnp.max(jnp.abs(x)), jnp.max(jnp.mean(x * x, axis=-1))))
    a = _rms_norm(x, shape.rms_eps, inv_scale[0])  # norm weights are folded into wq, wk, wv
    q = (a @ w["wq"]).reshape(s_len, h, hd).transpose(1, 0, 2)  # 1/sqrt(hd) folded in too
    k = (a @ w["wk"]).reshape(s_len, kvh, hd).transpose(1, 0, 2)
    v = (a @ w["wv"]).reshape(s_len, kvh, hd).transpose(1, 0, 2)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    kc = jax.lax.dynamic_update_slice(kc, k, (zero, start, zero))
    vc = jax.lax.dynamic_update_slice(vc, v, (zero, start, zero))
    qg = q.reshape(kvh, group * s_len, hd)  # heads sharing a KV head side by side
    scores = jnp.einsum("gqd,gtd->gqt", qg, kc).reshape(h, s_len, -1)
    p = _masked_softmax(scores, mask)
    o = jnp.einsum("gqt,gtd->gqd", p.reshape(kvh, group * s_len, -1), vc)
    o = o.reshape(h, s_len, hd).transpose(1, 0, 2).reshape(s_len, h * hd)
    x = x + o @ w["wo"]
    if probe is not None:
        probe.append((jnp.max(jnp.abs(x)), jnp.max(jnp.mean(x * x, axis=-1))))
    m = _rms_norm(x, shape.rms_eps, inv_scale[1])  # norm weights folded into w_gate, w_up
    x = x + (_silu(m @ w["w_gate"], shape.silu) * (m @ w["w_up"])) @ w["w_down"]
    return x, kc, vc


def layers_step(
    shape: LlamaShape,
    weights: LayerWeights,
    hidden: Any,
    k_cache: Any,
    v_cache: Any,
    valid: Any,
    new_valid: Any,
    start: Any,
    cos: Any,
    sin: Any,
    causal: Any,
    diag: Any,
    probe: list[tuple[Any, Any]] | None = None,
) -> tuple[Any, Any, Any, Any]:
    """Run all decoder layers on `hidden` [S, D]; write the new keys/values into the caches.

    `valid` [T] marks cache slots holding real tokens (0 for left padding) and `new_valid` [S]
    the new tokens' entries. A padding query attends only to itself, so every softmax row has
    mass. Returns (hidden of the last new token [1, D], k_cache, v_cache, valid), caches
    [L, KVH, T, hd]. Pure JAX, traced both for plaintext runs and for SPU compilation; the
    layers are a `lax.scan` over the stacked weights, so the program holds one layer's code
    (compiling 30 unrolled layers took over a minute). `probe` (eager plaintext runs only)
    collects (max |x|, max mean x^2) at every norm input and unrolls the loop.
    """
    import jax
    import jax.numpy as jnp

    valid = jax.lax.dynamic_update_slice(valid, new_valid, (start,))
    mask = (causal * valid[None, :] + diag * (1.0 - valid[None, :]))[None, :, :]
    scales = np.array(
        [[shape.norm_scale(i, 0), shape.norm_scale(i, 1)] for i in range(shape.num_layers)],
        np.float32,
    )
    inv_scales = jnp.asarray(1.0 / scales)
    per_layer = {n: weights[n] for n in _WEIGHT_NAMES}
    if probe is not None:
        x, ks, vs = hidden, [], []
        for i in range(shape.num_layers):
            w = {n: v[i] for n, v in per_layer.items()}
            args = (start, cos, sin, mask, probe)
            x, kc, vc = _layer(shape, w, inv_scales[i], x, k_cache[i], v_cache[i], *args)
            ks.append(kc)
            vs.append(vc)
        return x[-1:], jnp.stack(ks), jnp.stack(vs), valid

    def body(x: Any, xs: tuple[Any, ...]) -> tuple[Any, tuple[Any, Any]]:
        w, inv, kc, vc = xs
        x, kc, vc = _layer(shape, w, inv, x, kc, vc, start, cos, sin, mask, None)
        return x, (kc, vc)

    x, (k_cache, v_cache) = jax.lax.scan(body, hidden, (per_layer, inv_scales, k_cache, v_cache))
    return x[-1:], k_cache, v_cache, valid


MAX_SCALED_ABS = 2048.0  # |x / scale| bound at a norm input (x*x overflows near 11,600)
MAX_SCALED_VAR = 1.0e4  # mean((x / scale)^2) bound (SPU's rsqrt is accurate below ~1e5)


def calibrate_norm_scales(
    shape: LlamaShape, weights: LayerWeights, hidden: np.ndarray
) -> LlamaShape:
    """Choose the public norm scales from a plaintext run on public calibration input.

    The scales depend on the model only (the calibration text is fixed and public), so parties
    and client derive the same ones; a margin of 5x on |x| and 10x on the variance covers
    prompts larger than the calibration text.
    """
    import dataclasses

    import jax

    n = hidden.shape[0]
    probe: list[tuple[Any, Any]] = []
    k = np.zeros(shape.cache_shape(n), np.float32)
    si = make_step_inputs(shape, 0, n, n)
    unscaled = dataclasses.replace(shape, norm_scales=())
    with jax.disable_jit():
        layers_step(
            unscaled, weights, hidden, k, k.copy(), np.zeros(n, np.float32),
            np.ones(n, np.float32), si.start, si.cos, si.sin, si.causal, si.diag, probe,
        )  # fmt: skip
    scales = []
    for max_abs, max_var in probe:
        scale = 1.0
        while float(max_abs) / scale > MAX_SCALED_ABS or float(max_var) / scale**2 > MAX_SCALED_VAR:
            scale *= 2.0
        scales.append(scale)
    return dataclasses.replace(shape, norm_scales=tuple(scales))
