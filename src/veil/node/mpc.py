"""The node's MPC party: with `--mpc-link HOST:PORT` a node is one of the parties of the `mpc`
mode (docs/mpc.md).

Its control channel is the node API route `POST /v1/mpc` (`MPC_PATH`): the request body is one
control frame (`veil.mpc.channel`, media type `application/x-veil-mpc`) and so is the answer.
Clients reach it inside Oblivious HTTP through the relay (the gateway allowlists the path), each
party's frame sealed to its own node's key, so the relay and the other nodes see ciphertext only.
The SPU links to the peer parties use the `--mpc-link` address.

Sessions belong to no connection here: a session ends when its client closes it, when it idles
past `mpc_session_timeout_s`, or when a run fails. Every request for a session carries the token
the client gave this party when it opened the session; without it the session is "unknown".

The SPU links to the peers are mutual TLS: the party's link certificate (`mpc_cert_dir`, by
default beside the identity keystore) is stated in its `hello`, which reaches the client sealed
to this node's verified key; each session trusts exactly the two peer certificates the client
gives at `open`. Each session runs in a spawned session worker (`veil.mpc.worker`) that the
party kills when a run fails or stalls, or when the client closes the session mid-run, so the
survivors of a dead peer free the session's shares and serve new sessions.

Runs block for seconds, so each request runs on a thread of its own, off the event loop. They
are daemon threads, so that a request waiting on a session worker cannot keep the node from
exiting; at most `MAX_IN_FLIGHT` run at once, more get `party_busy`. At shutdown the party
kills its workers (and a worker exits by itself when its node process is gone).

Nothing here logs a frame or any part of one: the party logs op names and error codes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.identity import MpcParty
from veil.mpc.channel import MEDIA_MPC, MPC_PATH, decode_frame, encode_frame
from veil.mpc.errors import MpcError, PartyBusy, ProtocolViolation
from veil.node.config import NodeConfig
from veil.node.errors import NodeSetupError

if TYPE_CHECKING:
    from veil.mpc.party import PartyService

__all__ = ["MAX_IN_FLIGHT", "MEDIA_MPC", "MPC_PATH", "NodeParty", "build_party"]

MAX_IN_FLIGHT = 16  # party requests running at once (one session runs at a time anyway)

# HTTP status of an error frame (the frame's own code is what the client reads)
_STATUS = {
    "protocol_violation": 400,
    "bad_share": 400,
    "config": 400,
    "unknown_session": 404,
    "session_expired": 410,
    "session_exists": 409,
    "party_busy": 409,
    "party_failure": 502,
    "link_failure": 502,
}


def _error(exc: MpcError) -> tuple[dict[str, Any], list[bytes]]:
    return {"ok": False, "error": exc.code, "message": str(exc)}, []


class NodeParty:
    """A `PartyService` behind the node API: frames in, frames out, runs off the event loop.

    `model_id` names the model whose layers it computes (None: the node's own model); the
    node states the party in its signed descriptor (`descriptor_entry`)."""

    def __init__(
        self,
        service: PartyService,
        model_id: str | None = None,
        *,
        protocol: str | None = None,
        weights_sha256: str | None = None,
    ) -> None:
        self.service = service
        self.model_id = model_id
        self.protocol = protocol or service.config.settings.protocol
        self.weights_sha256 = weights_sha256 or service.weights_sha256
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    def descriptor_entry(self, node_model_id: str) -> MpcParty:
        """What the descriptor says of this party: protocol, model id, layer weights digest."""
        return MpcParty(
            self.protocol, self.model_id or node_model_id, bytes.fromhex(self.weights_sha256)
        )

    def start(self) -> None:
        """Start wiping idle sessions (the app's lifespan calls this)."""
        self.service.start()

    def stop(self) -> None:
        """Wipe every session and kill the session workers (the app's lifespan calls this)."""
        self.service.shutdown()

    async def answer(self, body: bytes) -> tuple[int, bytes]:
        """(HTTP status, answer frame) for one request frame."""
        try:
            header, blobs = decode_frame(body)
        except ProtocolViolation as exc:
            reply, out = _error(exc)
        else:
            if self._slots.acquire(blocking=False):
                reply, out = await _in_daemon_thread(self._handle, header, blobs)
            else:
                reply, out = _error(PartyBusy("this party has too many requests in flight"))
        status = 200 if reply.get("ok") else _STATUS.get(str(reply.get("error")), 500)
        return status, encode_frame(reply, out)

    def _handle(
        self, header: dict[str, Any], blobs: list[bytes]
    ) -> tuple[dict[str, Any], list[bytes]]:
        try:
            return self.service.handle(header, blobs, None, public=True)
        finally:
            self._slots.release()


async def _in_daemon_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` on a new daemon thread and await its result.

    If the awaiting request is cancelled (the client went away), the thread still finishes
    and its result is dropped."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, daemon=True, name="mpc-request").start()
    return await future


def build_party(config: NodeConfig, loaded: Any = None, *, warm: bool = True) -> NodeParty:
    """The party `config.mpc_link` asks for, serving `loaded` (the node's own model, a
    `veil.engine.LoadedModel`) unless `config.mpc_model` names another source (`tiny:<seed>`).

    `warm` starts the first session worker now and waits until it has compiled the first
    cache bucket's programs (seconds for SmolLM2), so the first session is not slow; without
    it, workers compile on first use and the first starts with the app. Raises
    `NodeSetupError` for settings that cannot work (a bad link certificate or key included).
    """
    from veil.mpc.party import PartyConfig, PartyService
    from veil.mpc.runtime import MpcConfig
    from veil.mpc.source import load_source, source_from_loaded

    if config.mpc_link is None:
        raise NodeSetupError("no mpc_link: this node hosts no MPC party")
    try:
        settings = MpcConfig(protocol=config.mpc_protocol)
        if config.mpc_model is not None:
            source = load_source(config.mpc_model)
        elif loaded is not None:
            source = source_from_loaded(loaded)
        else:
            raise NodeSetupError("mpc: no model to serve")
    except MpcError as exc:
        raise NodeSetupError(f"mpc: {exc}") from exc
    except (KeyError, AttributeError, ValueError) as exc:  # not a Llama-shaped model
        raise NodeSetupError(f"mpc: this model cannot run as MPC layers ({exc})") from exc
    party_config = PartyConfig(
        link=config.mpc_link,
        settings=settings,
        session_timeout_s=config.mpc_session_timeout_s,
        link_timeout_ms=int(config.mpc_link_timeout_s * 1000),
        cert_dir=_cert_dir(config),
        warm=warm,
    )
    try:
        service = PartyService(party_config, source.shape, source.weights, source.weights_sha256)
    except MpcError as exc:
        raise NodeSetupError(f"mpc: {exc}") from exc
    if warm:
        try:
            service.warm()
        except MpcError as exc:
            service.shutdown()
            raise NodeSetupError(f"mpc: {exc}") from exc
    model_id = config.mpc_model or getattr(loaded, "model_id", None)
    return NodeParty(
        service, model_id, protocol=settings.protocol, weights_sha256=source.weights_sha256
    )


def _cert_dir(config: NodeConfig) -> str | None:
    """Where the party keeps its link certificate: the configured directory, else beside the
    node's identity keystore, else nowhere (a fresh certificate for this run)."""
    if config.mpc_cert_dir is not None:
        return config.mpc_cert_dir
    if config.identity_path is not None:
        identity = Path(config.identity_path)
        return str(identity.with_name(f"{identity.stem}-mpc-link"))
    return None
