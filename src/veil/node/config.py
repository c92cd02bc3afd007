"""The node's settings, from a TOML file and command-line flags (flags win)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from veil.errors import VeilError

__all__ = ["ENGINES", "NodeConfig", "NodeConfigError"]


class NodeConfigError(VeilError):
    """The configuration file or a flag is invalid."""


ENGINES = ("builtin", "ctranslate2", "upstream")  # veil.engine.BACKEND_KINDS (no torch here)


def _host_port(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


@dataclass(frozen=True)
class NodeConfig:
    host: str = "127.0.0.1"  # bind address; loopback unless the operator opens it up
    port: int = 8700  # TCP port of the node API
    model_path: str | None = None  # GGUF file or HF model directory; None = packaged SmolLM2
    model_id: str | None = None  # name clients ask for; default derives from the model
    # the inference backend (docs/operators.md): "ctranslate2" (fast CPU, default), "builtin"
    # (the fp32 reference engine) or "upstream" (an OpenAI-compatible server at upstream_url,
    # whose weights are `model_path`: the node declares their hash, "declared" scope)
    engine: str = "ctranslate2"
    upstream_url: str | None = None  # base URL of the upstream server, e.g. http://host:8000/v1
    upstream_model: str | None = None  # the model name the upstream knows; None = model_id
    upstream_connect_timeout_s: float = 5.0  # to connect to the upstream, at most
    upstream_read_timeout_s: float = 60.0  # between two pieces of the upstream's answer
    context_length: int = 2048  # tokens per sequence (prompt + completion), at most
    max_tokens_limit: int = 1024  # largest max_tokens a request may ask for
    default_max_tokens: int = 256  # completion budget when a request names none
    max_batch: int = 8  # sequences decoded together
    max_queue: int = 64  # requests waiting for a batch slot before 503s
    max_body_bytes: int = 1 << 20  # request bodies above this get 413
    threads: int | None = None  # torch CPU threads; None = torch's default
    keys_path: str | None = None  # OHTTP key file (created if missing); None = keys in memory
    key_rotation_s: int | None = 900  # OHTTP key rotation period; None = never rotate
    identity_path: str | None = None  # node account keystore (created 0600); None = in memory
    endpoint: str | None = (
        None  # where clients reach the node (descriptor); None = http://host:port
    )
    descriptor_lifetime_s: int = 6 * 3600  # descriptor validity; re-issued after half of it
    log_level: str = "info"
    # evidence in the descriptor: "dev" (no hardware isolation; `tee` clients refuse it) or
    # "tdx" (a quote from configfs-tsm inside an Intel TDX guest; never falls back to dev)
    attestation: str = "dev"
    # payments and on-chain registration (issue #6); without a deployment the node is free
    deployment_path: str | None = None  # chain deployment JSON; None = off-chain, no payments
    stake: int | None = None  # stake to hold, token base units; None = the chain's min stake
    free: bool = False  # with a deployment: serve requests without tickets too (devnets)
    ticket_face_value: int = 10**18  # paid when a ticket wins, base units (10**18 = 1 VEIL)
    ticket_win_prob: float = 0.1  # chance a ticket wins: price = face value x this
    tickets_path: str | None = None  # winning-ticket queue; None = tickets.jsonl by identity
    auto_withdraw: bool = True  # withdraw earnings to the node account after redemptions
    redeem_interval_s: float = 5.0  # redeemer pass period (and first retry delay)
    withdraw_interval_s: float = 60.0  # seconds between earnings withdrawals (transactions)
    # seconds between checks that redeemed tickets are still redeemed on chain (a chain that
    # lost blocks lost their redemptions: they are redeemed again); also done at start
    reconcile_interval_s: float = 60.0
    # MPC party (issue #7): with a link address the node is one of three parties of the mpc mode
    mpc_link: str | None = None  # host:port bound for the SPU links to peer parties; None = off
    mpc_protocol: str = "aby3"  # aby3 (3 parties) | semi2k | cheetah (2 parties)
    mpc_model: str | None = None  # None = the node's own model; "tiny:<seed>" for tests
    mpc_session_timeout_s: float = 300.0  # an idle MPC session is wiped after this
    mpc_link_timeout_s: float = 60.0  # a peer party silent this long mid-run fails the session
    # the party's link certificate + key (mutual TLS between parties; made on first start, key
    # 0600); None = beside the identity keystore (<stem>-mpc-link/), else fresh for each run
    mpc_cert_dir: str | None = None
    # anonymous credits (issue #14): RFC 9578 tokens bought with one ticket per batch
    credits_path: str | None = None  # token keys + spent sets; None = credits/ by identity
    token_epoch_s: int = 86_400  # token key lifetime; the key rotates at each epoch boundary
    token_grace_s: int = 3_600  # the previous epoch's tokens are still accepted this long
    token_price: int = 1  # tokens one chat request costs (1 token = one ticket price)
    token_batch_max: int = 64  # tokens one purchase may ask for
    # streamed answers through the gateway: "off", or "pad" (sealed chunks padded to buckets)
    stream_shaping: str = "pad"

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.port <= 65535, "port must be 1..65535"),
            (self.engine in ENGINES, f"engine must be one of {', '.join(ENGINES)}"),
            (
                (self.engine == "upstream") == (self.upstream_url is not None),
                "upstream_url is needed with engine upstream, and only with it",
            ),
            (
                self.upstream_url is None or self.upstream_url.startswith(("http://", "https://")),
                "upstream_url must be an http:// or https:// URL",
            ),
            (self.upstream_connect_timeout_s > 0, "upstream_connect_timeout_s must be positive"),
            (self.upstream_read_timeout_s > 0, "upstream_read_timeout_s must be positive"),
            (self.context_length >= 16, "context_length must be at least 16"),
            (self.max_tokens_limit >= 1, "max_tokens_limit must be positive"),
            (
                1 <= self.default_max_tokens <= self.max_tokens_limit,
                "default_max_tokens must be between 1 and max_tokens_limit",
            ),
            (1 <= self.max_batch <= 256, "max_batch must be 1..256"),
            (self.max_queue >= 1, "max_queue must be positive"),
            (self.max_body_bytes >= 1024, "max_body_bytes must be at least 1024"),
            (self.threads is None or self.threads >= 1, "threads must be positive"),
            (
                self.key_rotation_s is None or self.key_rotation_s >= 10,
                "key_rotation_s must be at least 10",
            ),
            (self.descriptor_lifetime_s >= 60, "descriptor_lifetime_s must be at least 60"),
            (self.attestation in ("dev", "tdx"), "attestation must be dev or tdx"),
            (self.stake is None or self.stake > 0, "stake must be positive"),
            (0 < self.ticket_face_value < 2**256, "ticket_face_value must be positive"),
            (
                0.0 < self.ticket_win_prob <= 1.0 and self.ticket_win_prob * 2**256 >= 1,
                "ticket_win_prob must be within (0, 1]",
            ),
            (self.redeem_interval_s > 0, "redeem_interval_s must be positive"),
            (self.withdraw_interval_s >= 0, "withdraw_interval_s must not be negative"),
            (self.reconcile_interval_s > 0, "reconcile_interval_s must be positive"),
            (
                self.mpc_link is None or _host_port(self.mpc_link),
                "mpc_link must be host:port",
            ),
            (self.mpc_session_timeout_s > 0, "mpc_session_timeout_s must be positive"),
            (self.mpc_link_timeout_s > 0, "mpc_link_timeout_s must be positive"),
            (
                self.token_epoch_s >= 3600,  # NodeRegistry.MIN_TOKEN_KEY_INTERVAL
                "token_epoch_s must be at least 3600 (the registry lets a token key change "
                "at most hourly)",
            ),
            (
                0 <= self.token_grace_s <= self.token_epoch_s,
                "token_grace_s must be within [0, token_epoch_s]",
            ),
            (1 <= self.token_price <= 64, "token_price must be 1..64"),
            (1 <= self.token_batch_max <= 1024, "token_batch_max must be 1..1024"),
            (self.stream_shaping in ("off", "pad"), "stream_shaping must be off or pad"),
        ]
        for ok, message in checks:
            if not ok:
                raise NodeConfigError(message)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> NodeConfig:
        """Read `[node]` (or top-level keys) from a TOML file, then apply non-None overrides."""
        values: dict[str, Any] = {}
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise NodeConfigError(f"cannot read config {path}: {exc}") from exc
            values = data.get("node", data)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise NodeConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        try:
            config = cls(**values)
        except TypeError as exc:
            raise NodeConfigError(str(exc)) from exc
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})
