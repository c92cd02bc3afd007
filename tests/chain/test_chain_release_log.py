"""ReleaseLog: append-only approvals, supersede, revoke, governance."""

import boa

NO_REF = 2**256 - 1
M1, S1 = b"\x01" * 32, b"\xa1" * 32
M2, S2 = b"\x02" * 32, b"\xa2" * 32
APPROVE, REVOKE = 1, 2


def gov(ledger):
    return boa.env.prank(ledger.deployer)


def test_publish_approves(ledger) -> None:
    with gov(ledger):
        index = ledger.release_log.publish(M1, S1, "smollm2 q8 / node 0.1.0")
    assert index == 0
    assert ledger.release_log.isApproved(M1, S1)
    assert not ledger.release_log.isApproved(M1, S2)
    assert not ledger.release_log.isApproved(M2, S1)
    entry = ledger.release_log.getEntry(0)
    assert (entry.action, entry.modelHash, entry.measurement, entry.ref, entry.note) == (
        APPROVE,
        M1,
        S1,
        NO_REF,
        "smollm2 q8 / node 0.1.0",
    )
    assert entry.publishedAt == boa.env.timestamp
    assert ledger.release_log.isInForce(0)
    assert ledger.release_log.entryCount() == 1


def test_supersede_replaces_and_keeps_history(ledger) -> None:
    with gov(ledger):
        ledger.release_log.publish(M1, S1, "v1")
        new = ledger.release_log.supersede(0, M1, S2, "v2")
    assert new == 1
    assert not ledger.release_log.isApproved(M1, S1)
    assert ledger.release_log.isApproved(M1, S2)
    assert not ledger.release_log.isInForce(0)
    assert ledger.release_log.getEntry(0).note == "v1"  # never edited
    assert ledger.release_log.getEntry(1).ref == 0


def test_revoke_appends_an_entry(ledger) -> None:
    with gov(ledger):
        ledger.release_log.publish(M1, S1, "v1")
        index = ledger.release_log.revoke(0, "CVE-2026-0001")
    assert index == 1
    assert not ledger.release_log.isApproved(M1, S1)
    e = ledger.release_log.getEntry(1)
    assert (e.action, e.modelHash, e.measurement, e.ref, e.note) == (
        REVOKE,
        M1,
        S1,
        0,
        "CVE-2026-0001",
    )
    with gov(ledger):  # a revoked pair can be approved again by a new entry
        assert ledger.release_log.publish(M1, S1, "fixed") == 2
    assert ledger.release_log.isApproved(M1, S1)
    assert not ledger.release_log.isInForce(0)


def test_only_governance(ledger, alice, unchanged) -> None:
    a = alice.address
    with unchanged("not governance"), boa.env.prank(a):
        ledger.release_log.publish(M1, S1, "")
    with gov(ledger):
        ledger.release_log.publish(M1, S1, "")
    with unchanged("not governance"), boa.env.prank(a):
        ledger.release_log.supersede(0, M2, S2, "")
    with unchanged("not governance"), boa.env.prank(a):
        ledger.release_log.revoke(0, "")
    with unchanged("not governance"), boa.env.prank(a):
        ledger.release_log.transferGovernance(a)


def test_measurements_of_any_descriptor_length(ledger) -> None:
    """A measurement is 1 to 64 bytes: TDX's 32-byte digest, or a dev node's claim."""
    with gov(ledger):
        for measurement in (b"\x07", b"\x08" * 48, b"\x09" * 64):
            ledger.release_log.publish(M1, measurement, "")
    assert ledger.release_log.isApproved(M1, b"\x08" * 48)
    assert not ledger.release_log.isApproved(M1, b"\x08" * 47)
    assert ledger.release_log.getEntry(2).measurement == b"\x09" * 64
    # the key concatenates a fixed-size hash with the measurement: no two pairs collide
    assert not ledger.release_log.isApproved(b"\x07" + M1[1:], M1[:1] + b"\x07")


def test_bad_entries(ledger, unchanged) -> None:
    with unchanged("zero hash"), gov(ledger):
        ledger.release_log.publish(b"\x00" * 32, S1, "")
    with unchanged("empty measurement"), gov(ledger):
        ledger.release_log.publish(M1, b"", "")
    with unchanged("entry not in force"), gov(ledger):
        ledger.release_log.revoke(0, "")
    with unchanged("entry not in force"), gov(ledger):
        ledger.release_log.supersede(0, M2, S2, "")
    with gov(ledger):
        ledger.release_log.publish(M1, S1, "")
        ledger.release_log.publish(M2, S2, "")
    with unchanged("already approved"), gov(ledger):
        ledger.release_log.publish(M1, S1, "again")
    with unchanged("already approved"), gov(ledger):
        ledger.release_log.supersede(0, M2, S2, "")  # target pair already in force
    with gov(ledger):
        ledger.release_log.revoke(0, "")
    with unchanged("entry not in force"), gov(ledger):
        ledger.release_log.revoke(0, "")
    with unchanged("entry not in force"), gov(ledger):
        ledger.release_log.revoke(2, "")  # a revoke entry is never "in force"
    with unchanged("no such entry"):
        ledger.release_log.getEntry(99)


def test_transfer_governance(ledger, alice, unchanged) -> None:
    with unchanged("zero address"), gov(ledger):
        ledger.release_log.transferGovernance("0x" + "00" * 20)
    with gov(ledger):
        ledger.release_log.transferGovernance(alice.address)
    assert ledger.release_log.governance() == alice.address
    with boa.env.prank(alice.address):
        ledger.release_log.publish(M1, S1, "")
    with unchanged("not governance"), gov(ledger):
        ledger.release_log.publish(M2, S2, "")
