"""Node policy: which nodes a client may send to, per privacy mode; and the check itself.

It lives in attest, below the client that applies it, so `veil verify` and any other caller
can check a node the way a client would.

`verify_node(descriptor_bytes, policy, now)` runs the steps of `NODE_STEPS` in order:

| step | refuses when |
|---|---|
| `descriptor` | the bytes do not parse as a node descriptor (the field is named) |
| `signature` | the descriptor is not signed by the address it names |
| `validity` | it has expired, or is issued in the future |
| `evidence_kind` | the kind is unknown, or the mode does not accept it (`tee` refuses `dev`) |
| `attestation` | the kind's verifier refuses the evidence (its own steps are in the report) |
| `evidence_age` | the evidence is older than the mode allows |
| `key_binding` | report data does not bind this address, exact OHTTP keys, models, issue time |
| `measurement` | hardware-measured software differs from what the descriptor claims |
| `release` | no served model (or not the one asked for) is an approved release |

It fails closed: the first failed step raises `NodeRejected` with the report attached and the
rest marked skipped; only a node that passed every step yields a report whose `key_check`
and `key_configs` can be used. Dev evidence passes only where the mode accepts it, and then
the report carries the warning "no hardware isolation" (also logged).

Approved releases come from a `ReleaseSource`: a local JSON file today (`LocalReleases`), the
chain's ReleaseLog once `veil.chain` provides one with the same method.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from veil.attest.binding import check_binding
from veil.attest.errors import KeyConfigError, NodeRejected, PolicyConfigError, UnknownEvidenceKind
from veil.attest.evidence import HARDWARE_KINDS, KIND_DEV, KIND_NVIDIA, KIND_TDX, KNOWN_KINDS
from veil.attest.report import (
    NO_HARDWARE_ISOLATION,
    AttestationReport,
    Step,
    StepLog,
    StepStatus,
)
from veil.attest.tdx import DEFAULT_TCB_STATUSES, CollateralSource
from veil.attest.verifier import EvidenceVerifier, default_verifiers
from veil.errors import VeilError
from veil.identity.descriptor import Descriptor, ModelEntry, SignedDescriptor
from veil.wire.ohttp import KeyConfig

__all__ = [
    "NODE_STEPS",
    "LocalReleases",
    "Policy",
    "PrivacyMode",
    "Release",
    "ReleaseSource",
    "VerificationReport",
    "verify_node",
]

log = logging.getLogger(__name__)

NODE_STEPS = (
    "descriptor",
    "signature",
    "validity",
    "evidence_kind",
    "attestation",
    "evidence_age",
    "key_binding",
    "measurement",
    "release",
)


class PrivacyMode(StrEnum):
    ANONYMOUS = "anonymous"  # node sees the prompt, not who sent it
    TEE = "tee"  # only a hardware-attested enclave sees the prompt
    MPC = "mpc"  # nodes see secret shares only


@dataclass(frozen=True)
class Release:
    """An approved pairing of model weights and the software measurement that may serve them."""

    model_hash: bytes  # 32-byte weights sha256
    measurement: bytes  # TDX: veil.attest.tdx.tdx_measurement; dev: the descriptor's claim


class ReleaseSource(Protocol):
    """Answers whether a (model, measurement) pair is an approved release.

    `LocalReleases` reads a file; the chain's ReleaseLog client plugs in with the same method.
    """

    def is_approved(self, model_hash: bytes, measurement: bytes) -> bool: ...


def _hex(value: object, what: str, *, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise PolicyConfigError(f"releases: {what} must be a hex string")
    text = value[2:] if value.startswith(("0x", "0X")) else value
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise PolicyConfigError(f"releases: {what} is not hex") from None
    if (length is not None and len(raw) != length) or not 0 < len(raw) <= 64:
        raise PolicyConfigError(f"releases: {what} has the wrong length")
    return raw


class LocalReleases:
    """Approved releases from a local JSON file: `[{"model_hash": hex, "measurement": hex}]`."""

    def __init__(self, releases: Iterable[Release]) -> None:
        self._approved = frozenset((r.model_hash, r.measurement) for r in releases)

    @classmethod
    def from_file(cls, path: Path) -> LocalReleases:
        try:
            entries = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise PolicyConfigError(f"cannot read releases file {path}: {err}") from None
        if not isinstance(entries, list):
            raise PolicyConfigError("releases file must hold a JSON list")
        releases = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not {"model_hash", "measurement"} <= entry.keys():
                raise PolicyConfigError(f"releases[{i}] needs model_hash and measurement")
            releases.append(
                Release(
                    _hex(entry["model_hash"], f"releases[{i}].model_hash", length=32),
                    _hex(entry["measurement"], f"releases[{i}].measurement"),
                )
            )
        return cls(releases)

    def is_approved(self, model_hash: bytes, measurement: bytes) -> bool:
        return (model_hash, measurement) in self._approved

    def __len__(self) -> int:
        return len(self._approved)


_MODE_DEFAULTS: dict[PrivacyMode, tuple[frozenset[str], int]] = {
    PrivacyMode.ANONYMOUS: (frozenset({KIND_DEV, KIND_TDX}), 7 * 24 * 3600),
    PrivacyMode.TEE: (frozenset({KIND_TDX}), 24 * 3600),
    PrivacyMode.MPC: (frozenset({KIND_DEV, KIND_TDX}), 7 * 24 * 3600),
}


@dataclass(frozen=True)
class Policy:
    """What one privacy mode accepts. Use `Policy.for_mode`; construction checks consistency."""

    mode: PrivacyMode
    accepted_kinds: frozenset[str]  # evidence kinds; `tee` accepts hardware kinds only
    tcb_statuses: frozenset[str] = DEFAULT_TCB_STATUSES  # Intel TCB statuses accepted
    rejected_advisories: frozenset[str] = frozenset()  # Intel SA ids that refuse a platform
    max_evidence_age_s: int = 24 * 3600  # now - descriptor issued_at (bound in the evidence)
    releases: ReleaseSource | None = None  # approved releases; required by `tee`
    collateral: CollateralSource | None = None  # TDX collateral; None: the evidence's own
    clock_skew_s: int = 60  # tolerated clock difference for issue times

    def __post_init__(self) -> None:
        try:
            mode = PrivacyMode(self.mode)
        except ValueError:
            raise PolicyConfigError(f"unknown privacy mode {self.mode!r}") from None
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "accepted_kinds", frozenset(self.accepted_kinds))
        if not self.accepted_kinds:
            raise PolicyConfigError("a policy must accept at least one evidence kind")
        unknown = self.accepted_kinds - KNOWN_KINDS
        if unknown:
            raise PolicyConfigError(f"unknown evidence kind(s): {', '.join(sorted(unknown))}")
        if KIND_NVIDIA in self.accepted_kinds:
            raise PolicyConfigError("NVIDIA CC evidence is not supported yet; no policy accepts it")
        if self.requires_hardware:
            soft = self.accepted_kinds - HARDWARE_KINDS
            if soft:
                raise PolicyConfigError(
                    f"{mode} needs hardware isolation; it cannot accept {', '.join(sorted(soft))}"
                )
            if self.releases is None:
                raise PolicyConfigError(f"{mode} needs a list of approved releases")
        if self.max_evidence_age_s <= 0:
            raise PolicyConfigError("max_evidence_age_s must be positive")

    @property
    def requires_hardware(self) -> bool:
        return self.mode is PrivacyMode.TEE

    @classmethod
    def for_mode(
        cls,
        mode: PrivacyMode | str,
        *,
        releases: ReleaseSource | None = None,
        collateral: CollateralSource | None = None,
        **overrides: object,
    ) -> Policy:
        """The default policy of a mode; keyword overrides change single fields."""
        mode = PrivacyMode(mode)
        kinds, age = _MODE_DEFAULTS[mode]
        fields: dict[str, object] = {
            "accepted_kinds": kinds,
            "max_evidence_age_s": age,
            "releases": releases,
            "collateral": collateral,
            **overrides,
        }
        return cls(mode=mode, **fields)  # type: ignore[arg-type]


@dataclass
class VerificationReport:
    """The outcome of `verify_node`: every step, and, when `verified`, what can be used."""

    mode: PrivacyMode
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    descriptor: Descriptor | None = None  # set once parsed (even if a later step failed)
    attestation: AttestationReport | None = None
    approved_models: tuple[ModelEntry, ...] = ()
    verified: bool = False  # True only when every step passed

    @property
    def address(self) -> str | None:
        return None if self.descriptor is None else self.descriptor.address

    @property
    def hardware_isolated(self) -> bool:
        return self.attestation is not None and self.attestation.hardware_isolated

    @property
    def isolation(self) -> str:
        if self.attestation is None:
            return "unknown"
        return self.attestation.isolation

    def _usable(self) -> Descriptor:
        if not self.verified or self.descriptor is None:
            raise NodeRejected("the node is not verified", check="verified", report=self)
        return self.descriptor

    def key_configs(self) -> tuple[KeyConfig, ...]:
        """The key configs the client may encrypt to (only from a verified node)."""
        return self._usable().key_configs()

    def key_check(
        self, *, clock: Callable[[], float] = time.time
    ) -> Callable[[tuple[KeyConfig, ...]], None]:
        """A `key_check` for `OhttpTransport`: accepts only this descriptor's key configs.

        It refuses (`KeyConfigError`) any config the descriptor does not list, and everything
        once the descriptor has expired: then verify the node again.
        """
        descriptor = self._usable()
        allowed = frozenset(c.encode() for c in descriptor.key_configs())
        expires_at = descriptor.expires_at

        def check(configs: tuple[KeyConfig, ...]) -> None:
            if clock() >= expires_at:
                raise KeyConfigError("the node's verified descriptor has expired; verify again")
            if not configs:
                raise KeyConfigError("empty key list")
            for config in configs:
                if config.encode() not in allowed:
                    raise KeyConfigError(
                        f"key config {config.key_id} is not in the node's verified descriptor"
                    )

        return check


def _model_ids(models: Iterable[ModelEntry]) -> str:
    return ", ".join(m.model_id for m in models) or "none"


def _run(
    data: bytes | str,
    policy: Policy,
    now: int,
    model_id: str | None,
    verifiers: Mapping[str, EvidenceVerifier],
    report: VerificationReport,
    steps: StepLog,
) -> None:
    with steps.step("descriptor") as detail:
        signed = SignedDescriptor.parse(data)
        d = report.descriptor = signed.descriptor
        detail.append(f"node {d.address} at {d.endpoint}")
    with steps.step("signature") as detail:
        signed.verify_signature()
        detail.append("EIP-191, recovers to " + d.address)
    with steps.step("validity") as detail:
        signed.check_validity(now, clock_skew_s=policy.clock_skew_s)
        detail.append(f"until {d.expires_at}")
    with steps.step("evidence_kind") as detail:
        kind = d.evidence.kind
        if kind not in KNOWN_KINDS or kind not in verifiers:
            raise UnknownEvidenceKind(f"unknown evidence kind {kind!r}")
        if kind not in policy.accepted_kinds:
            why = f" ({NO_HARDWARE_ISOLATION})" if kind not in HARDWARE_KINDS else ""
            raise NodeRejected(
                f"the {policy.mode} policy does not accept {kind} evidence{why}",
                check="evidence_kind",
            )
        detail.append(kind)
    with steps.step("attestation") as detail:
        try:
            attestation = verifiers[kind].verify(d.evidence.data, now=now)
        except VeilError as err:
            report.attestation = getattr(err, "report", None)
            raise
        report.attestation = attestation
        if policy.requires_hardware and not attestation.hardware_isolated:
            raise NodeRejected(f"{policy.mode} needs hardware isolation", check="attestation")
        detail.append(attestation.isolation)
        if attestation.tcb_status:
            detail.append("TCB " + attestation.tcb_status)
    with steps.step("evidence_age") as detail:
        age = now - d.issued_at
        if age > policy.max_evidence_age_s:
            raise NodeRejected(
                f"evidence is {age} s old; the {policy.mode} policy allows "
                f"{policy.max_evidence_age_s} s",
                check="evidence_age",
            )
        detail.append(f"{max(age, 0)} s old")
    with steps.step("key_binding") as detail:
        check_binding(attestation.report_data, d)
        detail.append("report data binds the address, OHTTP keys, models and issue time")
    if attestation.hardware_isolated:
        with steps.step("measurement") as detail:
            if attestation.measurement != d.software:
                raise NodeRejected(
                    "the measured software differs from the descriptor's claim",
                    check="measurement",
                )
            detail.append("measured " + d.software.hex())
        measurement = attestation.measurement
    else:
        steps.add("measurement", StepStatus.WARNING, "claimed by the node, not measured")
        measurement = d.software
    if policy.releases is None:
        steps.add("release", StepStatus.WARNING, "no release list configured: not checked")
        report.warnings.append("releases not checked: any software and model is accepted")
        report.approved_models = d.models
    else:
        with steps.step("release") as detail:
            approved = tuple(
                m for m in d.models if policy.releases.is_approved(m.weights_hash, measurement)
            )
            if model_id is not None:
                if model_id not in {m.model_id for m in d.models}:
                    raise NodeRejected(f"the node does not serve {model_id!r}", check="release")
                if model_id not in {m.model_id for m in approved}:
                    raise NodeRejected(
                        f"{model_id!r} on this software is not an approved release",
                        check="release",
                    )
            if not approved:
                raise NodeRejected(
                    "no model served on this software is an approved release", check="release"
                )
            report.approved_models = approved
            detail.append("approved: " + _model_ids(approved))


def verify_node(
    descriptor_bytes: bytes | str,
    policy: Policy,
    now: int,
    *,
    model_id: str | None = None,
    verifiers: Mapping[str, EvidenceVerifier] | None = None,
) -> VerificationReport:
    """Verify a node's signed descriptor under `policy` at `now` (UNIX s); see the module doc.

    `model_id`: the model the client will ask for; it must be served and approved.
    `verifiers`: a verifier per evidence kind (default: `default_verifiers` set up from the
    policy's TCB statuses, rejected advisories and collateral source).
    """
    table = (
        default_verifiers(
            tcb_statuses=policy.tcb_statuses,
            rejected_advisories=policy.rejected_advisories,
            collateral=policy.collateral,
        )
        if verifiers is None
        else verifiers
    )
    report = VerificationReport(mode=policy.mode)
    steps = StepLog()
    report.steps = steps.steps
    try:
        _run(descriptor_bytes, policy, now, model_id, table, report, steps)
    except VeilError as err:
        steps.skip_rest(NODE_STEPS, "an earlier step failed")
        failed = next(s.name for s in report.steps if s.status is StepStatus.FAILED)
        if isinstance(err, NodeRejected):
            err.report = report
            raise
        raise NodeRejected(f"{failed}: {err}", check=failed, report=report, cause=err) from err
    if report.attestation is not None:
        report.warnings[:0] = report.attestation.warnings
    if not report.hardware_isolated:
        log.warning(
            "node %s accepted under the %s policy with %s",
            report.address,
            policy.mode,
            NO_HARDWARE_ISOLATION,
        )
    report.verified = True
    return report
