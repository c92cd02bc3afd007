"""The node descriptor: what a node is, signed by its account (EIP-191).

A node serves it at `DESCRIPTOR_PATH`. Wire form (JSON):

    {"descriptor": {...body...}, "signature": "0x<65 bytes>"}

The body has exactly these fields:

| field | JSON | meaning |
|---|---|---|
| `type` | `"veil-node-descriptor"` | separates descriptors from anything else the key signs |
| `version` | `1` | format version |
| `address` | EIP-55 string | the node account; the signature must recover to it |
| `endpoint` | string | where clients reach the node (URL or relay node id) |
| `ohttp_keys` | base64 | the `application/ohttp-keys` list the node decrypts with |
| `models` | list of `{"id", "weights_sha256"}` | served models and their weights hashes (0x hex) |
| `software` | 0x hex, 1-64 bytes | the software measurement the node claims |
| `evidence` | `{"kind", "data"}` (data base64) | attestation evidence, verified per kind |
| `issued_at`, `expires_at` | integers, UNIX s | validity window |
| `mpc` (optional) | `{"protocol", "model", "weights_sha256"}` | the MPC party the node hosts |
| `token_keys` (optional) | list of 0x hex (32 bytes) | RFC 9578 token key ids, newest first |

`mpc` is present only on a node that is also a party of the `mpc` mode (`veil node serve
--mpc-link`): `protocol` is the SPU protocol it runs (e.g. `aby3`), `model` the model id whose
layers it computes (the id a client asks for as `<model>:mpc`), `weights_sha256` the digest of
those layers' weights that the parties compare before a session (0x hex, 32 bytes). A node
without a party omits the field, so descriptors from before it existed parse and verify
unchanged. The field is covered by the signature like every other; it is not part of the
evidence's report data (`veil.identity.binding`): the `mpc` mode rests on the parties not
colluding, not on hardware.

`token_keys` commits the node to its anonymous-credit keys (`veil.node.credits`): a client
refuses a token key whose id is not listed, so a node cannot tag users with per-user keys.
A node that sells no tokens omits the field.

The signature is EIP-191 `personal_sign` over `keccak256(canonical_json(body))`; that digest
(`Descriptor.digest()`) is also what a registry can store on chain. Parsing re-encodes the body
and refuses it unless the bytes are canonical, so there is one spelling per descriptor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak

from veil.identity.account import NodeIdentity
from veil.identity.codec import (
    b64,
    canonical_json,
    get_address,
    get_b64,
    get_hex,
    get_int,
    get_str,
    hex0x,
    parse_json_object,
    require_fields,
)
from veil.identity.errors import (
    DescriptorExpired,
    DescriptorMalformed,
    DescriptorSignatureInvalid,
)
from veil.wire.errors import WireError
from veil.wire.http import DESCRIPTOR_PATH, MEDIA_DESCRIPTOR
from veil.wire.ohttp import KeyConfig, decode_key_configs

__all__ = [
    "DESCRIPTOR_PATH",
    "DESCRIPTOR_TYPE",
    "MAX_DESCRIPTOR_BYTES",
    "MEDIA_DESCRIPTOR",
    "Descriptor",
    "Evidence",
    "ModelEntry",
    "MpcParty",
    "SignedDescriptor",
    "load_descriptor",
]

DESCRIPTOR_TYPE = "veil-node-descriptor"
MAX_DESCRIPTOR_BYTES = 512 * 1024  # a TDX quote with its collateral is about 30 KB
MAX_EVIDENCE_BYTES = 256 * 1024
MAX_MODELS = 64
_KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
_PROTOCOL = re.compile(r"[a-z][a-z0-9]{0,15}")
_BODY_FIELDS = frozenset(
    {
        "type",
        "version",
        "address",
        "endpoint",
        "ohttp_keys",
        "models",
        "software",
        "evidence",
        "issued_at",
        "expires_at",
    }
)
_OPTIONAL_FIELDS = frozenset({"mpc", "token_keys"})
MAX_TOKEN_KEYS = 4
_MPC_FIELDS = frozenset({"protocol", "model", "weights_sha256"})
_MODEL_FIELDS = frozenset({"id", "weights_sha256"})
_MODEL_OPTIONAL_FIELDS = frozenset({"engine", "weights_scope"})


def _optional_kind(entry: dict[str, Any], name: str, where: str) -> str | None:
    if name not in entry:
        return None
    return get_str(
        entry, name, DescriptorMalformed, check=f"{where}.{name}", max_len=32, pattern=_KIND
    )


@dataclass(frozen=True)
class ModelEntry:
    """A model the node serves: the id clients ask for, and the sha256 of its weights.

    `engine` names the backend kind that serves it and `weights_scope` what the hash covers
    (`veil.engine.backend.WEIGHTS_SCOPES`: "loaded", "converted" or "declared"); both are
    optional in the JSON, and absent in descriptors from nodes that predate them.
    """

    model_id: str
    weights_hash: bytes  # 32 bytes (veil.engine.model.weights_digest, as bytes)
    engine: str | None = None  # "builtin", "ctranslate2", "upstream"; None: not stated
    weights_scope: str | None = None  # "loaded", "converted", "declared"; None: not stated

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": self.model_id, "weights_sha256": hex0x(self.weights_hash)}
        if self.engine is not None:
            entry["engine"] = self.engine
        if self.weights_scope is not None:
            entry["weights_scope"] = self.weights_scope
        return entry


@dataclass(frozen=True)
class MpcParty:
    """The MPC party a node hosts: its SPU protocol, the model whose layers it computes, and
    the digest of those layers' weights (what the parties compare before a session)."""

    protocol: str  # e.g. "aby3"
    model_id: str  # the model a client asks for as `<model>:mpc`
    weights_hash: bytes  # 32 bytes (veil.mpc.source.ModelSource.weights_sha256, as bytes)

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "model": self.model_id,
            "weights_sha256": hex0x(self.weights_hash),
        }

    @classmethod
    def from_json(cls, obj: Any) -> MpcParty:
        err, where = DescriptorMalformed, "descriptor.mpc"
        _check(isinstance(obj, dict), "not an object", where)
        require_fields(obj, _MPC_FIELDS, err, check=where)
        return cls(
            get_str(obj, "protocol", err, check=where + ".protocol", max_len=16, pattern=_PROTOCOL),
            get_str(obj, "model", err, check=where + ".model", max_len=128, pattern=_MODEL_ID),
            get_hex(obj, "weights_sha256", err, check=where + ".weights_sha256", length=32),
        )


@dataclass(frozen=True)
class Evidence:
    """Attestation evidence: its kind names the verifier (`veil.attest`) that reads `data`."""

    kind: str
    data: bytes


def _check(ok: bool, message: str, check: str) -> None:
    if not ok:
        raise DescriptorMalformed(message, check=check)


@dataclass(frozen=True)
class Descriptor:
    """The unsigned body. Build it, then `sign` it with the node's identity."""

    address: str
    endpoint: str
    ohttp_keys: bytes  # the application/ohttp-keys encoding of the node's key configs
    models: tuple[ModelEntry, ...]
    software: bytes  # software measurement the node claims (hardware evidence must agree)
    evidence: Evidence
    issued_at: int
    expires_at: int
    mpc: MpcParty | None = None  # the MPC party the node hosts; None: it hosts none
    token_keys: tuple[bytes, ...] = ()  # RFC 9578 token_key_ids, newest first; (): sells none

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": DESCRIPTOR_TYPE,
            "version": 1,
            "address": self.address,
            "endpoint": self.endpoint,
            "ohttp_keys": b64(self.ohttp_keys),
            "models": [m.to_json() for m in self.models],
            "software": hex0x(self.software),
            "evidence": {"kind": self.evidence.kind, "data": b64(self.evidence.data)},
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }
        if self.mpc is not None:
            body["mpc"] = self.mpc.to_json()
        if self.token_keys:
            body["token_keys"] = [hex0x(k) for k in self.token_keys]
        return body

    def body(self) -> bytes:
        """The canonical bytes that are signed."""
        return canonical_json(self.to_json())

    def digest(self) -> bytes:
        """keccak256 of the canonical body: what the signature covers."""
        return keccak(self.body())

    @property
    def model_hashes(self) -> tuple[bytes, ...]:
        return tuple(m.weights_hash for m in self.models)

    def key_configs(self) -> tuple[KeyConfig, ...]:
        """The usable key configs of `ohttp_keys` (checked when the descriptor was parsed)."""
        try:
            return decode_key_configs(self.ohttp_keys)
        except WireError as err:
            raise DescriptorMalformed(str(err), check="descriptor.ohttp_keys") from None

    def sign(self, identity: NodeIdentity) -> SignedDescriptor:
        if identity.address != self.address:
            raise ValueError("the descriptor names another address than the signing identity")
        # Round-trip first: a body that would not parse back must not be signed.
        parsed = Descriptor.from_json(self.to_json())
        return SignedDescriptor(parsed, identity.sign_digest(self.digest()))

    @classmethod
    def from_json(cls, obj: Any) -> Descriptor:
        """A body from parsed JSON; `DescriptorMalformed` naming the field that is wrong."""
        _check(isinstance(obj, dict), "body is not an object", "descriptor")
        require_fields(
            obj, _BODY_FIELDS, DescriptorMalformed, check="descriptor", optional=_OPTIONAL_FIELDS
        )
        _check(obj["type"] == DESCRIPTOR_TYPE, "not a node descriptor", "descriptor.type")
        _check(
            type(obj["version"]) is int and obj["version"] == 1,
            "unsupported version",
            "descriptor.version",
        )
        err = DescriptorMalformed
        address = get_address(obj, "address", err, check="descriptor.address")
        endpoint = get_str(obj, "endpoint", err, check="descriptor.endpoint", max_len=2048)
        _check(endpoint.isascii() and " " not in endpoint, "not ASCII", "descriptor.endpoint")
        ohttp_keys = get_b64(obj, "ohttp_keys", err, check="descriptor.ohttp_keys", max_len=8192)
        try:
            decode_key_configs(ohttp_keys)
        except WireError as wire_err:
            raise err(f"key configs: {wire_err}", check="descriptor.ohttp_keys") from None
        models_raw = obj["models"]
        _check(
            isinstance(models_raw, list) and 0 < len(models_raw) <= MAX_MODELS,
            f"must be a list of 1 to {MAX_MODELS} models",
            "descriptor.models",
        )
        models = []
        for i, entry in enumerate(models_raw):
            where = f"descriptor.models[{i}]"
            _check(isinstance(entry, dict), "not an object", where)
            require_fields(entry, _MODEL_FIELDS, err, check=where, optional=_MODEL_OPTIONAL_FIELDS)
            models.append(
                ModelEntry(
                    get_str(entry, "id", err, check=where + ".id", max_len=128, pattern=_MODEL_ID),
                    get_hex(
                        entry, "weights_sha256", err, check=f"{where}.weights_sha256", length=32
                    ),
                    engine=_optional_kind(entry, "engine", where),
                    weights_scope=_optional_kind(entry, "weights_scope", where),
                )
            )
        _check(
            len({m.model_id for m in models}) == len(models),
            "model ids repeat",
            "descriptor.models",
        )
        software = get_hex(obj, "software", err, check="descriptor.software", max_len=64)
        ev = obj["evidence"]
        _check(isinstance(ev, dict), "not an object", "descriptor.evidence")
        require_fields(ev, frozenset({"kind", "data"}), err, check="descriptor.evidence")
        evidence = Evidence(
            get_str(ev, "kind", err, check="descriptor.evidence.kind", max_len=32, pattern=_KIND),
            get_b64(ev, "data", err, check="descriptor.evidence.data", max_len=MAX_EVIDENCE_BYTES),
        )
        issued_at = get_int(obj, "issued_at", err, check="descriptor.issued_at", hi=2**40)
        expires_at = get_int(obj, "expires_at", err, check="descriptor.expires_at", hi=2**40)
        _check(expires_at > issued_at, "expires before it is issued", "descriptor.expires_at")
        mpc = MpcParty.from_json(obj["mpc"]) if "mpc" in obj else None
        token_keys = _token_keys(obj["token_keys"]) if "token_keys" in obj else ()
        return cls(
            address=address,
            endpoint=endpoint,
            ohttp_keys=ohttp_keys,
            models=tuple(models),
            software=software,
            evidence=evidence,
            issued_at=issued_at,
            expires_at=expires_at,
            mpc=mpc,
            token_keys=token_keys,
        )


def _token_keys(value: Any) -> tuple[bytes, ...]:
    where = "descriptor.token_keys"
    _check(isinstance(value, list) and 1 <= len(value) <= MAX_TOKEN_KEYS, "1-4 key ids", where)
    keys = tuple(get_hex({"k": k}, "k", DescriptorMalformed, check=where, length=32) for k in value)
    _check(len(set(keys)) == len(keys), "key ids repeat", where)
    return keys


@dataclass(frozen=True)
class SignedDescriptor:
    """A descriptor with its signature. `parse` checks the format; `verify_signature` the key."""

    descriptor: Descriptor
    signature: bytes

    def encode(self) -> bytes:
        return canonical_json(
            {"descriptor": self.descriptor.to_json(), "signature": hex0x(self.signature)}
        )

    @classmethod
    def parse(cls, data: bytes | str) -> SignedDescriptor:
        """The format only (no signature check): `DescriptorMalformed` naming the field."""
        obj = parse_json_object(
            data, DescriptorMalformed, check="descriptor", max_bytes=MAX_DESCRIPTOR_BYTES
        )
        require_fields(
            obj, frozenset({"descriptor", "signature"}), DescriptorMalformed, check="descriptor"
        )
        signature = get_hex(obj, "signature", DescriptorMalformed, check="signature", length=65)
        descriptor = Descriptor.from_json(obj["descriptor"])
        if canonical_json(obj["descriptor"]) != descriptor.body():
            raise DescriptorMalformed("body is not in canonical form", check="descriptor")
        return cls(descriptor, signature)

    def signer(self) -> str:
        """The address the signature recovers to (any valid signature recovers to some)."""
        try:
            return str(
                Account.recover_message(
                    encode_defunct(primitive=self.descriptor.digest()), signature=self.signature
                )
            )
        except Exception:  # eth_keys raises several types for an invalid signature
            raise DescriptorSignatureInvalid("signature does not recover to a key") from None

    def verify_signature(self) -> None:
        """`DescriptorSignatureInvalid` unless signed by the address the descriptor names."""
        signer = self.signer()
        if signer != self.descriptor.address:
            raise DescriptorSignatureInvalid(
                f"signed by {signer}, not by the descriptor's address {self.descriptor.address}"
            )

    def check_validity(self, now: int, *, clock_skew_s: int = 60) -> None:
        """`DescriptorExpired` unless issued_at - skew <= now < expires_at."""
        d = self.descriptor
        if now >= d.expires_at:
            raise DescriptorExpired(f"expired at {d.expires_at} (now {now})")
        if now + clock_skew_s < d.issued_at:
            raise DescriptorExpired(f"issued in the future ({d.issued_at}, now {now})")


def load_descriptor(data: bytes | str, now: int) -> SignedDescriptor:
    """Parse, check the signature and the validity window at `now`, in that order."""
    signed = SignedDescriptor.parse(data)
    signed.verify_signature()
    signed.check_validity(now)
    return signed
