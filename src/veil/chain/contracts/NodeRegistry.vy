# pragma version 0.4.3
"""
@title NodeRegistry
@notice Who operates a Veil node, where it listens, which keys, attestation and models it
        announces, and how much stake backs it.
@dev A node is keyed by its operator address. Stake leaves only through an unbonding
     period during which it stays slashable; withdrawal also waits while a challenge
     against the node is open, so a node cannot run from a pending slash. Only the
     Slasher (set once by the owner) can slash.
"""

interface Token:
    def transfer(receiver: address, amount: uint256) -> bool: nonpayable
    def transferFrom(owner: address, receiver: address, amount: uint256) -> bool: nonpayable
    def burn(amount: uint256): nonpayable

interface Slasher:
    def openChallengesAgainst(node: address) -> uint256: view

MAX_MODELS: constant(uint256) = 8
# A node's anonymous-credit (token) key may change at most this often, so a node cannot hand
# each buyer a key of their own: clients buy only under the key committed here last.
MIN_TOKEN_KEY_INTERVAL: constant(uint256) = 3600
MAX_PAGE: constant(uint256) = 64
MAX_NODES: constant(uint256) = 2**32
# The bytes an endpoint may hold after "http://" or "https://" (bit c set: byte c allowed):
# a-z 0-9 . - : [ ], enough for a lower-case host name, an IPv4 or a bracketed IPv6 address
# and a port. So no path, query, fragment, userinfo, percent escape, space or upper case.
ENDPOINT_CHARS: constant(uint256) = (
    (2**26 - 1) * 2**97  # a-z (0x61-0x7a)
    + 2**93  # ]
    + 2**91  # [
    + (2**11 - 1) * 2**48  # 0-9 and : (0x30-0x3a)
    + 2**46  # .
    + 2**45  # -
)

struct ModelInfo:
    modelId: String[64]
    weightsHash: bytes32

struct NodeInfo:
    operator: address
    endpoint: String[256]
    ohttpKeysHash: bytes32
    attestationDigest: bytes32
    stake: uint256
    unbonding: uint256
    unbondingEndsAt: uint256
    registered: bool
    active: bool
    models: DynArray[ModelInfo, MAX_MODELS]

struct NodeStake:
    operator: address
    stake: uint256

struct Node:
    endpoint: String[256]
    ohttpKeysHash: bytes32
    attestationDigest: bytes32
    stake: uint256
    unbonding: uint256
    unbondingEndsAt: uint256
    registered: bool

event NodeRegistered:
    operator: indexed(address)
    endpoint: String[256]
    ohttpKeysHash: bytes32
    attestationDigest: bytes32
    stake: uint256

event EndpointUpdated:
    operator: indexed(address)
    endpoint: String[256]

event OhttpKeysUpdated:
    operator: indexed(address)
    ohttpKeysHash: bytes32

event AttestationUpdated:
    operator: indexed(address)
    attestationDigest: bytes32

event ModelsUpdated:
    operator: indexed(address)
    models: DynArray[ModelInfo, MAX_MODELS]

event StakeAdded:
    operator: indexed(address)
    amount: uint256
    stake: uint256

event UnbondingStarted:
    operator: indexed(address)
    amount: uint256
    unbonding: uint256
    unbondingEndsAt: uint256

event StakeWithdrawn:
    operator: indexed(address)
    amount: uint256

event NodeDeregistered:
    operator: indexed(address)

event NodeSlashed:
    operator: indexed(address)
    amount: uint256
    reward: uint256
    beneficiary: indexed(address)

struct TokenKeys:
    current: bytes32
    previous: bytes32
    committedAt: uint256

event TokenKeyCommitted:
    operator: indexed(address)
    keyId: bytes32
    previous: bytes32

event SlasherSet:
    slasher: indexed(address)

token: public(immutable(Token))
minStake: public(immutable(uint256))
unbondingPeriod: public(immutable(uint256))
owner: public(immutable(address))
slasher: public(address)

nodes: HashMap[address, Node]
models: HashMap[address, DynArray[ModelInfo, MAX_MODELS]]
operators: DynArray[address, MAX_NODES]
listed: HashMap[address, bool]
tokenKeys: HashMap[address, TokenKeys]
totalStaked: public(uint256)


@deploy
def __init__(token_: Token, minStake_: uint256, unbondingPeriod_: uint256):
    assert minStake_ > 0, "zero minimum stake"
    token = token_
    minStake = minStake_
    unbondingPeriod = unbondingPeriod_
    owner = msg.sender


@external
def setSlasher(slasher_: address):
    assert msg.sender == owner, "not owner"
    assert self.slasher == empty(address), "slasher already set"
    assert slasher_ != empty(address), "zero address"
    self.slasher = slasher_
    log SlasherSet(slasher=slasher_)


@pure
@internal
def _checkEndpoint(endpoint: String[256]):
    """
    @dev A coarse form of veil.wire.endpoint's canonical rule: scheme, then host and port
         only. Clients and relays apply the full rule anyway; this keeps the registry from
         recording an endpoint that names a path on someone else's server.
    """
    assert len(endpoint) > 0, "empty endpoint"
    raw: Bytes[256] = convert(endpoint, Bytes[256])
    n: uint256 = len(raw)
    start: uint256 = 0
    if n > 8 and convert(slice(raw, 0, 8), bytes8) == 0x68747470733a2f2f:  # "https://"
        start = 8
    elif n > 7 and convert(slice(raw, 0, 7), bytes7) == 0x687474703a2f2f:  # "http://"
        start = 7
    assert start != 0, "endpoint must be http(s)://host[:port]"
    padded: Bytes[288] = concat(raw, empty(bytes32))  # extract32 may read past the end
    for i: uint256 in range(start, n, bound=256):
        c: uint256 = convert(extract32(padded, i), uint256) >> 248
        assert (ENDPOINT_CHARS >> c) & 1 == 1, "endpoint must be http(s)://host[:port]"


@internal
def _checkModels(models_: DynArray[ModelInfo, MAX_MODELS]):
    assert len(models_) > 0, "no models"
    for m: ModelInfo in models_:
        assert len(m.modelId) > 0, "empty model id"
        assert m.weightsHash != empty(bytes32), "zero hash"


@external
def register(
    endpoint: String[256],
    ohttpKeysHash: bytes32,
    attestationDigest: bytes32,
    models_: DynArray[ModelInfo, MAX_MODELS],
    stake: uint256,
):
    assert not self.nodes[msg.sender].registered, "already registered"
    self._checkEndpoint(endpoint)
    assert ohttpKeysHash != empty(bytes32), "zero hash"
    assert attestationDigest != empty(bytes32), "zero hash"
    self._checkModels(models_)
    assert stake >= minStake, "stake below minimum"
    self.nodes[msg.sender] = Node(
        endpoint=endpoint,
        ohttpKeysHash=ohttpKeysHash,
        attestationDigest=attestationDigest,
        stake=stake,
        unbonding=0,
        unbondingEndsAt=0,
        registered=True,
    )
    self.models[msg.sender] = models_
    if not self.listed[msg.sender]:
        self.listed[msg.sender] = True
        self.operators.append(msg.sender)
    self.totalStaked += stake
    assert extcall token.transferFrom(msg.sender, self, stake), "token transfer failed"
    log NodeRegistered(
        operator=msg.sender,
        endpoint=endpoint,
        ohttpKeysHash=ohttpKeysHash,
        attestationDigest=attestationDigest,
        stake=stake,
    )
    log ModelsUpdated(operator=msg.sender, models=models_)


@external
def updateEndpoint(endpoint: String[256]):
    assert self.nodes[msg.sender].registered, "not registered"
    self._checkEndpoint(endpoint)
    self.nodes[msg.sender].endpoint = endpoint
    log EndpointUpdated(operator=msg.sender, endpoint=endpoint)


@external
def updateOhttpKeys(ohttpKeysHash: bytes32):
    assert self.nodes[msg.sender].registered, "not registered"
    assert ohttpKeysHash != empty(bytes32), "zero hash"
    self.nodes[msg.sender].ohttpKeysHash = ohttpKeysHash
    log OhttpKeysUpdated(operator=msg.sender, ohttpKeysHash=ohttpKeysHash)


@external
def updateAttestation(attestationDigest: bytes32):
    assert self.nodes[msg.sender].registered, "not registered"
    assert attestationDigest != empty(bytes32), "zero hash"
    self.nodes[msg.sender].attestationDigest = attestationDigest
    log AttestationUpdated(operator=msg.sender, attestationDigest=attestationDigest)


@external
def updateModels(models_: DynArray[ModelInfo, MAX_MODELS]):
    assert self.nodes[msg.sender].registered, "not registered"
    self._checkModels(models_)
    self.models[msg.sender] = models_
    log ModelsUpdated(operator=msg.sender, models=models_)


@external
def commitTokenKey(keyId: bytes32):
    """
    @notice Commit the key id (sha256 of the RFC 9578 public key) a node now issues tokens
            under; the one before stays readable as `previous` (its tokens are spent in a
            grace window). At most one change per MIN_TOKEN_KEY_INTERVAL.
    """
    assert self.nodes[msg.sender].registered, "not registered"
    assert keyId != empty(bytes32), "zero key id"
    keys: TokenKeys = self.tokenKeys[msg.sender]
    assert keyId != keys.current, "key already committed"
    if keys.committedAt != 0:
        assert block.timestamp >= keys.committedAt + MIN_TOKEN_KEY_INTERVAL, "token key changed too recently"
    self.tokenKeys[msg.sender] = TokenKeys(
        current=keyId, previous=keys.current, committedAt=block.timestamp
    )
    log TokenKeyCommitted(operator=msg.sender, keyId=keyId, previous=keys.current)


@external
def addStake(amount: uint256):
    assert self.nodes[msg.sender].registered, "not registered"
    assert amount > 0, "zero amount"
    stake: uint256 = self.nodes[msg.sender].stake + amount
    self.nodes[msg.sender].stake = stake
    self.totalStaked += amount
    assert extcall token.transferFrom(msg.sender, self, amount), "token transfer failed"
    log StakeAdded(operator=msg.sender, amount=amount, stake=stake)


@external
def unbond(amount: uint256):
    """
    @notice Move `amount` of stake into unbonding. Unbonding everything leaves the network;
            otherwise the remaining stake must still meet the minimum. Restarts the timer.
    """
    assert self.nodes[msg.sender].registered, "not registered"
    assert amount > 0, "zero amount"
    stake: uint256 = self.nodes[msg.sender].stake
    assert amount <= stake, "insufficient stake"
    assert stake - amount == 0 or stake - amount >= minStake, "stake below minimum"
    unbonding: uint256 = self.nodes[msg.sender].unbonding + amount
    endsAt: uint256 = block.timestamp + unbondingPeriod
    self.nodes[msg.sender].stake = stake - amount
    self.nodes[msg.sender].unbonding = unbonding
    self.nodes[msg.sender].unbondingEndsAt = endsAt
    log UnbondingStarted(
        operator=msg.sender, amount=amount, unbonding=unbonding, unbondingEndsAt=endsAt
    )


@external
def withdraw():
    """
    @notice Withdraw unbonded stake once the period is over and no challenge is open.
            A node left with no stake is deregistered and may register again later.
    """
    amount: uint256 = self.nodes[msg.sender].unbonding
    # amount 0 with no stake left: a leaving node whose unbonding stake was slashed away
    # still deregisters (and may register again)
    leaving: bool = self.nodes[msg.sender].registered and self.nodes[msg.sender].stake == 0
    assert amount > 0 or leaving, "nothing unbonding"
    assert block.timestamp >= self.nodes[msg.sender].unbondingEndsAt, "unbonding period not over"
    if self.slasher != empty(address):
        pending: uint256 = staticcall Slasher(self.slasher).openChallengesAgainst(msg.sender)
        assert pending == 0, "challenge pending"
    self.nodes[msg.sender].unbonding = 0
    self.nodes[msg.sender].unbondingEndsAt = 0
    self.totalStaked -= amount
    if leaving:
        self.nodes[msg.sender] = empty(Node)
        self.models[msg.sender] = []
        log NodeDeregistered(operator=msg.sender)
    if amount > 0:
        assert extcall token.transfer(msg.sender, amount), "token transfer failed"
        log StakeWithdrawn(operator=msg.sender, amount=amount)


@external
def slash(node: address, amount: uint256, beneficiary: address, reward: uint256):
    """
    @notice Take `amount` from the node's bonded then unbonding stake; pay `reward` of it
            to `beneficiary` and burn the rest.
    """
    assert msg.sender == self.slasher, "only slasher"
    stake: uint256 = self.nodes[node].stake
    unbonding: uint256 = self.nodes[node].unbonding
    assert amount <= stake + unbonding, "slash exceeds slashable"
    assert reward <= amount, "reward exceeds slash"
    fromStake: uint256 = min(amount, stake)
    self.nodes[node].stake = stake - fromStake
    self.nodes[node].unbonding = unbonding - (amount - fromStake)
    self.totalStaked -= amount
    if reward > 0:
        assert extcall token.transfer(beneficiary, reward), "token transfer failed"
    if amount > reward:
        extcall token.burn(amount - reward)
    log NodeSlashed(operator=node, amount=amount, reward=reward, beneficiary=beneficiary)


@view
@internal
def _isActive(operator: address) -> bool:
    return self.nodes[operator].registered and self.nodes[operator].stake >= minStake


@view
@external
def isActive(operator: address) -> bool:
    return self._isActive(operator)


@view
@external
def stakeOf(operator: address) -> uint256:
    return self.nodes[operator].stake


@view
@external
def slashableOf(operator: address) -> uint256:
    return self.nodes[operator].stake + self.nodes[operator].unbonding


@view
@external
def getNode(operator: address) -> NodeInfo:
    n: Node = self.nodes[operator]
    return NodeInfo(
        operator=operator,
        endpoint=n.endpoint,
        ohttpKeysHash=n.ohttpKeysHash,
        attestationDigest=n.attestationDigest,
        stake=n.stake,
        unbonding=n.unbonding,
        unbondingEndsAt=n.unbondingEndsAt,
        registered=n.registered,
        active=self._isActive(operator),
        models=self.models[operator],
    )


@view
@external
def tokenKeysOf(operator: address) -> TokenKeys:
    return self.tokenKeys[operator]


@view
@external
def operatorCount() -> uint256:
    """@notice Number of operators ever registered (active or not); pages of `activeNodes`."""
    return len(self.operators)


@view
@external
def operatorAt(index: uint256) -> address:
    return self.operators[index]


@view
@external
def activeNodes(start: uint256, count: uint256) -> DynArray[NodeStake, MAX_PAGE]:
    """@notice Active nodes and their stake among operators[start : start + count]."""
    result: DynArray[NodeStake, MAX_PAGE] = []
    end: uint256 = min(start + min(count, MAX_PAGE), len(self.operators))
    if start >= end:
        return result
    for i: uint256 in range(start, end, bound=MAX_PAGE):
        op: address = self.operators[i]
        if self._isActive(op):
            result.append(NodeStake(operator=op, stake=self.nodes[op].stake))
    return result
