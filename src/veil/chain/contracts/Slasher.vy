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
    self.challenges[challengeId] = Challenge(
        node=node,
        challenger=msg.sender,
        evidenceHash=evidenceHash,
        bond=bond,
        openBlock=block.number,
        deadline=deadline,
        stakeSnapshot=self.totalValidatorStake,
        votesFor=0,
        votesAgainst=0,
        status=STATUS_OPEN,
        slashed=0,
    )
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
    c: Challenge = self.challenges[challengeId]
    assert c.status != STATUS_NONE, "no such challenge"
    assert c.status == STATUS_OPEN, "challenge not open"
    assert block.timestamp < c.deadline, "voting closed"
    assert self._isVoting(msg.sender), "not a validator"
    assert self.validators[msg.sender].sinceBlock < c.openBlock, "validator joined after challenge"
    assert msg.sender != c.node, "cannot vote on own challenge"
    assert not self.voted[challengeId][msg.sender], "already voted"
    weight: uint256 = self.validators[msg.sender].stake
    self.voted[challengeId][msg.sender] = True
    if support:
        self.challenges[challengeId].votesFor = c.votesFor + weight
    else:
        self.challenges[challengeId].votesAgainst = c.votesAgainst + weight
    log Voted(challengeId=challengeId, validator=msg.sender, support=support, weight=weight)


@view
@internal
def _quorum(c: Challenge) -> bool:
    return c.votesFor * 3 >= c.stakeSnapshot * 2


@external
def resolve(challengeId: uint256):
    """
    @notice Settle a challenge: at once when the slash quorum is reached, otherwise after
            the window closes (then the bond is burned).
    """
    c: Challenge = self.challenges[challengeId]
    assert c.status != STATUS_NONE, "no such challenge"
    assert c.status == STATUS_OPEN, "challenge not open"
    quorum: bool = self._quorum(c)
    assert quorum or block.timestamp >= c.deadline, "voting still open"

    self.openChallengesAgainst[c.node] -= 1
    self.totalBonds -= c.bond
    amount: uint256 = 0
    reward: uint256 = 0
    if quorum:
        amount = staticcall registry.slashableOf(c.node) * slashFractionBps // BPS
        reward = amount * challengerRewardBps // BPS
        self.challenges[challengeId].status = STATUS_SLASHED
        self.challenges[challengeId].slashed = amount
        extcall registry.slash(c.node, amount, c.challenger, reward)
        assert extcall token.transfer(c.challenger, c.bond), "token transfer failed"
    else:
        self.challenges[challengeId].status = STATUS_REJECTED
        extcall token.burn(c.bond)
    log ChallengeResolved(
        challengeId=challengeId, node=c.node, slashed=quorum, amount=amount, reward=reward
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
