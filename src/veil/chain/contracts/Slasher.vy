# pragma version 0.4.3
"""
@title Slasher
@notice Validators stake here and vote on challenges against nodes. A challenge carries
        an evidence hash (e.g. of a signed receipt) and a bond. If validators holding at
        least two thirds of the validator stake (snapshot at opening) vote to slash, a set
        fraction of the node's bonded and unbonding stake is slashed: a share goes to the
        challenger, the rest is burned, and the bond is returned. A challenge without that
        quorum when the window closes forfeits (burns) its bond.
@dev Only validators that joined in an earlier block than the challenge may vote, and a
     validator's stake is fixed while it is a validator, so the snapshot bounds the votes.
     Validator unbonding must outlast the voting window so stake cannot vote twice.
"""

interface Token:
    def transfer(receiver: address, amount: uint256) -> bool: nonpayable
    def transferFrom(owner: address, receiver: address, amount: uint256) -> bool: nonpayable
    def burn(amount: uint256): nonpayable

interface Registry:
    def stakeOf(operator: address) -> uint256: view
    def slashableOf(operator: address) -> uint256: view
    def slash(node: address, amount: uint256, beneficiary: address, reward: uint256): nonpayable

BPS: constant(uint256) = 10_000

STATUS_NONE: constant(uint8) = 0
STATUS_OPEN: constant(uint8) = 1
STATUS_SLASHED: constant(uint8) = 2
STATUS_REJECTED: constant(uint8) = 3

struct Validator:
    stake: uint256
    sinceBlock: uint256
    unbondingEndsAt: uint256

struct Challenge:
    node: address
    challenger: address
    evidenceHash: bytes32
    bond: uint256
    openBlock: uint256
    deadline: uint256
    stakeSnapshot: uint256
    votesFor: uint256
    votesAgainst: uint256
    status: uint8
    slashed: uint256

event ValidatorRegistered:
    validator: indexed(address)
    stake: uint256

event ValidatorUnbonding:
    validator: indexed(address)
    unbondingEndsAt: uint256

event ValidatorWithdrawn:
    validator: indexed(address)
    amount: uint256

event ChallengeOpened:
    challengeId: indexed(uint256)
    node: indexed(address)
    challenger: indexed(address)
    evidenceHash: bytes32
    bond: uint256
    deadline: uint256

event Voted:
    challengeId: indexed(uint256)
    validator: indexed(address)
    support: bool
    weight: uint256

event ChallengeResolved:
    challengeId: indexed(uint256)
    node: indexed(address)
    slashed: bool
    amount: uint256
    reward: uint256

token: public(immutable(Token))
registry: public(immutable(Registry))
minValidatorStake: public(immutable(uint256))
validatorUnbondingPeriod: public(immutable(uint256))
minBond: public(immutable(uint256))
votingWindow: public(immutable(uint256))
slashFractionBps: public(immutable(uint256))
challengerRewardBps: public(immutable(uint256))

validators: HashMap[address, Validator]
totalValidatorStake: public(uint256)
challenges: HashMap[uint256, Challenge]
challengeCount: public(uint256)
voted: HashMap[uint256, HashMap[address, bool]]
evidenceUsed: HashMap[bytes32, bool]
openChallengesAgainst: public(HashMap[address, uint256])
totalBonds: public(uint256)


@deploy
def __init__(
    token_: Token,
    registry_: Registry,
    minValidatorStake_: uint256,
    validatorUnbondingPeriod_: uint256,
    minBond_: uint256,
    votingWindow_: uint256,
    slashFractionBps_: uint256,
    challengerRewardBps_: uint256,
):
    assert minValidatorStake_ > 0, "zero minimum stake"
    assert votingWindow_ > 0, "zero voting window"
    assert validatorUnbondingPeriod_ > votingWindow_, "unbonding shorter than window"
    assert slashFractionBps_ <= BPS and challengerRewardBps_ <= BPS, "fraction above 100%"
    token = token_
    registry = registry_
    minValidatorStake = minValidatorStake_
    validatorUnbondingPeriod = validatorUnbondingPeriod_
    minBond = minBond_
    votingWindow = votingWindow_
    slashFractionBps = slashFractionBps_
    challengerRewardBps = challengerRewardBps_


@view
@internal
def _isVoting(v: address) -> bool:
    return self.validators[v].stake > 0 and self.validators[v].unbondingEndsAt == 0


@external
def registerValidator(stake: uint256):
    assert self.validators[msg.sender].stake == 0, "already a validator"
    assert stake >= minValidatorStake, "stake below minimum"
    self.validators[msg.sender] = Validator(stake=stake, sinceBlock=block.number, unbondingEndsAt=0)
    self.totalValidatorStake += stake
    assert extcall token.transferFrom(msg.sender, self, stake), "token transfer failed"
    log ValidatorRegistered(validator=msg.sender, stake=stake)


@external
def unbondValidator():
    """@notice Stop voting now; the stake can be withdrawn after the unbonding period."""
    assert self.validators[msg.sender].stake > 0, "not a validator"
    assert self.validators[msg.sender].unbondingEndsAt == 0, "already unbonding"
    endsAt: uint256 = block.timestamp + validatorUnbondingPeriod
    self.validators[msg.sender].unbondingEndsAt = endsAt
    self.totalValidatorStake -= self.validators[msg.sender].stake
    log ValidatorUnbonding(validator=msg.sender, unbondingEndsAt=endsAt)


@external
def withdrawValidator():
    v: Validator = self.validators[msg.sender]
    assert v.unbondingEndsAt != 0, "not unbonding"
    assert block.timestamp >= v.unbondingEndsAt, "unbonding period not over"
    self.validators[msg.sender] = empty(Validator)
    assert extcall token.transfer(msg.sender, v.stake), "token transfer failed"
    log ValidatorWithdrawn(validator=msg.sender, amount=v.stake)


@external
def openChallenge(node: address, evidenceHash: bytes32, bond: uint256) -> uint256:
    assert evidenceHash != empty(bytes32), "empty evidence"
    assert node != msg.sender, "cannot challenge self"
    assert self._isVoting(msg.sender) or staticcall registry.stakeOf(msg.sender) > 0, (
        "challenger has no stake"
    )
    assert bond >= minBond, "bond too small"
    assert staticcall registry.slashableOf(node) > 0, "node has no slashable stake"
    key: bytes32 = keccak256(abi_encode(node, evidenceHash))
    assert not self.evidenceUsed[key], "evidence already used"
    assert self.totalValidatorStake > 0, "no validators"

    challengeId: uint256 = self.challengeCount
    deadline: uint256 = block.timestamp + votingWindow
    self.challengeCount = challengeId + 1
    self.evidenceUsed[key] = True
    # field by field: the zero fields (votes, slashed) need no write
    self.challenges[challengeId].node = node
    self.challenges[challengeId].challenger = msg.sender
    self.challenges[challengeId].evidenceHash = evidenceHash
    self.challenges[challengeId].bond = bond
    self.challenges[challengeId].openBlock = block.number
    self.challenges[challengeId].deadline = deadline
    self.challenges[challengeId].stakeSnapshot = self.totalValidatorStake
    self.challenges[challengeId].status = STATUS_OPEN
    self.openChallengesAgainst[node] += 1
    self.totalBonds += bond
    assert extcall token.transferFrom(msg.sender, self, bond), "token transfer failed"
    log ChallengeOpened(
        challengeId=challengeId,
        node=node,
        challenger=msg.sender,
        evidenceHash=evidenceHash,
        bond=bond,
        deadline=deadline,
    )
    return challengeId


@external
def vote(challengeId: uint256, support: bool):
    # reads single fields, not the whole struct: each cold slot costs 2,100 gas
    status: uint8 = self.challenges[challengeId].status
    assert status != STATUS_NONE, "no such challenge"
    assert status == STATUS_OPEN, "challenge not open"
    assert block.timestamp < self.challenges[challengeId].deadline, "voting closed"
    assert self._isVoting(msg.sender), "not a validator"
    assert self.validators[msg.sender].sinceBlock < self.challenges[challengeId].openBlock, (
        "validator joined after challenge"
    )
    assert msg.sender != self.challenges[challengeId].node, "cannot vote on own challenge"
    assert not self.voted[challengeId][msg.sender], "already voted"
    weight: uint256 = self.validators[msg.sender].stake
    self.voted[challengeId][msg.sender] = True
    if support:
        self.challenges[challengeId].votesFor += weight
    else:
        self.challenges[challengeId].votesAgainst += weight
    log Voted(challengeId=challengeId, validator=msg.sender, support=support, weight=weight)


@external
def resolve(challengeId: uint256):
    """
    @notice Settle a challenge: at once when the slash quorum is reached, otherwise after
            the window closes (then the bond is burned).
    """
    status: uint8 = self.challenges[challengeId].status
    assert status != STATUS_NONE, "no such challenge"
    assert status == STATUS_OPEN, "challenge not open"
    quorum: bool = (
        self.challenges[challengeId].votesFor * 3 >= self.challenges[challengeId].stakeSnapshot * 2
    )
    assert quorum or block.timestamp >= self.challenges[challengeId].deadline, "voting still open"
    node: address = self.challenges[challengeId].node
    challenger: address = self.challenges[challengeId].challenger
    bond: uint256 = self.challenges[challengeId].bond

    self.openChallengesAgainst[node] -= 1
    self.totalBonds -= bond
    amount: uint256 = 0
    reward: uint256 = 0
    if quorum:
        amount = staticcall registry.slashableOf(node) * slashFractionBps // BPS
        reward = amount * challengerRewardBps // BPS
        self.challenges[challengeId].status = STATUS_SLASHED
        self.challenges[challengeId].slashed = amount
        extcall registry.slash(node, amount, challenger, reward)
        assert extcall token.transfer(challenger, bond), "token transfer failed"
    else:
        self.challenges[challengeId].status = STATUS_REJECTED
        extcall token.burn(bond)
    log ChallengeResolved(
        challengeId=challengeId, node=node, slashed=quorum, amount=amount, reward=reward
    )


@view
@external
def getValidator(validator: address) -> Validator:
    return self.validators[validator]


@view
@external
def getChallenge(challengeId: uint256) -> Challenge:
    assert challengeId < self.challengeCount, "no such challenge"
    return self.challenges[challengeId]


@view
@external
def hasVoted(challengeId: uint256, validator: address) -> bool:
    return self.voted[challengeId][validator]
