# pragma version 0.4.3
"""
@title ReleaseLog
@notice Append-only log of approved (model weights hash, node software measurement)
        releases. Governance appends entries and never edits them: an approval stays in
        force until a later entry supersedes or revokes it. Clients accept only nodes whose
        attested measurement and model hash form an approval in force.
@dev A measurement is 1 to 64 bytes, as in a node descriptor (a TDX release measurement
     is a 32-byte sha256; a dev node's claim may be shorter or longer).
"""

MAX_MEASUREMENT: constant(uint256) = 64

ACTION_APPROVE: constant(uint8) = 1
ACTION_REVOKE: constant(uint8) = 2
NO_REF: constant(uint256) = max_value(uint256)

struct Entry:
    action: uint8
    modelHash: bytes32
    measurement: Bytes[MAX_MEASUREMENT]
    ref: uint256
    note: String[256]
    publishedAt: uint256

event ReleaseApproved:
    index: indexed(uint256)
    modelHash: indexed(bytes32)
    measurement: Bytes[MAX_MEASUREMENT]
    supersedes: uint256
    note: String[256]

event ReleaseRevoked:
    index: indexed(uint256)
    revokedIndex: indexed(uint256)
    note: String[256]

event GovernanceTransferred:
    previous: indexed(address)
    governance: indexed(address)

governance: public(address)
entries: HashMap[uint256, Entry]
entryCount: public(uint256)
inForce: HashMap[uint256, bool]
approvalOf: HashMap[bytes32, uint256]  # pair key -> index + 1 of the approval in force


@deploy
def __init__():
    self.governance = msg.sender
    log GovernanceTransferred(previous=empty(address), governance=msg.sender)


@pure
@internal
def _key(modelHash: bytes32, measurement: Bytes[MAX_MEASUREMENT]) -> bytes32:
    return keccak256(concat(modelHash, measurement))


@internal
def _append(
    action: uint8,
    modelHash: bytes32,
    measurement: Bytes[MAX_MEASUREMENT],
    ref: uint256,
    note: String[256],
) -> uint256:
    index: uint256 = self.entryCount
    self.entries[index] = Entry(
        action=action,
        modelHash=modelHash,
        measurement=measurement,
        ref=ref,
        note=note,
        publishedAt=block.timestamp,
    )
    self.entryCount = index + 1
    return index


@internal
def _approve(
    modelHash: bytes32, measurement: Bytes[MAX_MEASUREMENT], ref: uint256, note: String[256]
) -> uint256:
    assert modelHash != empty(bytes32), "zero hash"
    assert len(measurement) > 0, "empty measurement"
    key: bytes32 = self._key(modelHash, measurement)
    assert self.approvalOf[key] == 0, "already approved"
    index: uint256 = self._append(ACTION_APPROVE, modelHash, measurement, ref, note)
    self.inForce[index] = True
    self.approvalOf[key] = index + 1
    log ReleaseApproved(
        index=index, modelHash=modelHash, measurement=measurement, supersedes=ref, note=note
    )
    return index


@internal
def _retire(index: uint256):
    assert self.inForce[index], "entry not in force"
    self.inForce[index] = False
    e: Entry = self.entries[index]
    self.approvalOf[self._key(e.modelHash, e.measurement)] = 0


@external
def publish(modelHash: bytes32, measurement: Bytes[MAX_MEASUREMENT], note: String[256]) -> uint256:
    """@notice Approve a (model hash, measurement) pair; returns the new entry's index."""
    assert msg.sender == self.governance, "not governance"
    return self._approve(modelHash, measurement, NO_REF, note)


@external
def supersede(
    oldIndex: uint256, modelHash: bytes32, measurement: Bytes[MAX_MEASUREMENT], note: String[256]
) -> uint256:
    """@notice Approve a new pair that replaces the approval at `oldIndex`."""
    assert msg.sender == self.governance, "not governance"
    self._retire(oldIndex)
    return self._approve(modelHash, measurement, oldIndex, note)


@external
def revoke(index: uint256, note: String[256]) -> uint256:
    """@notice Withdraw the approval at `index`; returns the revoking entry's index."""
    assert msg.sender == self.governance, "not governance"
    self._retire(index)
    e: Entry = self.entries[index]
    entry: uint256 = self._append(ACTION_REVOKE, e.modelHash, e.measurement, index, note)
    log ReleaseRevoked(index=entry, revokedIndex=index, note=note)
    return entry


@external
def transferGovernance(governance_: address):
    assert msg.sender == self.governance, "not governance"
    assert governance_ != empty(address), "zero address"
    log GovernanceTransferred(previous=self.governance, governance=governance_)
    self.governance = governance_


@view
@external
def isApproved(modelHash: bytes32, measurement: Bytes[MAX_MEASUREMENT]) -> bool:
    return self.approvalOf[self._key(modelHash, measurement)] != 0


@view
@external
def isInForce(index: uint256) -> bool:
    return self.inForce[index]


@view
@external
def getEntry(index: uint256) -> Entry:
    assert index < self.entryCount, "no such entry"
    return self.entries[index]
