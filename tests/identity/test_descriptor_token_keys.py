"""The descriptor's optional `token_keys`: absent by default, signed when present, strict."""

from __future__ import annotations

import json

import pytest

from support.attestation import SOFTWARE, mutate_body
from veil.attest.producer import DevProducer, issue_descriptor
from veil.identity import (
    DescriptorMalformed,
    DescriptorSignatureInvalid,
    ModelEntry,
    NodeIdentity,
    load_descriptor,
)
from veil.node.keys import NodeKeys

NOW = 1_700_000_000
IDENTITY = NodeIdentity.generate()
KEYS = NodeKeys.generate()


def _issue(token_keys: tuple[bytes, ...] = ()) -> bytes:
    return issue_descriptor(
        IDENTITY,
        DevProducer(),
        endpoint="https://node.veil.invalid",
        ohttp_keys=KEYS.encoded_configs(),
        models=(ModelEntry("m", bytes(32)),),
        software=SOFTWARE,
        now=NOW,
        token_keys=token_keys,
    ).encode()


def test_absent_without_credits_and_signed_with_them() -> None:
    assert "token_keys" not in json.loads(_issue())["descriptor"]
    ids = (b"\x01" * 32, b"\x02" * 32)
    wire = _issue(ids)
    assert json.loads(wire)["descriptor"]["token_keys"] == ["0x" + "01" * 32, "0x" + "02" * 32]
    signed = load_descriptor(wire, NOW)
    assert signed.descriptor.token_keys == ids and signed.encode() == wire
    with pytest.raises(DescriptorSignatureInvalid):  # a swapped key breaks the signature
        load_descriptor(mutate_body(signed, token_keys=["0x" + "03" * 32]), NOW)


@pytest.mark.parametrize(
    "value",
    [[], ["0x" + "01" * 31], ["0x" + "01" * 32] * 2, ["0x" + f"{i:02x}" * 32 for i in range(5)], 7],
)
def test_malformed_token_keys_are_refused(value: object) -> None:
    signed = load_descriptor(_issue((b"\x01" * 32,)), NOW)
    with pytest.raises(DescriptorMalformed) as info:
        load_descriptor(mutate_body(signed, token_keys=value), NOW)
    assert info.value.check == "descriptor.token_keys"
