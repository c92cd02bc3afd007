# pragma version 0.4.3
"""
@title TicketBroker
@notice Probabilistic micropayments (after Livepeer's TicketBroker). A sender funds a
        deposit and a reserve and signs an EIP-712 ticket per request; only winning
        tickets, keccak256(signature ++ recipientRand) < winProb, are redeemed here.
@dev Redemption credits the recipient's cumulative `earned` counter instead of
     transferring tokens, so the hot path touches three storage slots (replay flag, sender
     deposit, earned) and makes no external call; recipients collect with
     `withdrawEarnings`. `earned` and `withdrawn` only grow, so a withdrawal never zeroes
     the slot a later redemption writes (a zero-to-nonzero write costs 17k gas more: only a
     recipient's first redemption pays it, unless it called `openEarnings` beforehand,
     e.g. when it registered as a node). Signatures must
     be 65 bytes, low-s, v in {27, 28}: a malleable signature would give the recipient a
     second draw at the lottery.
"""

interface Token:
    def transfer(receiver: address, amount: uint256) -> bool: nonpayable
    def transferFrom(owner: address, receiver: address, amount: uint256) -> bool: nonpayable

struct Ticket:
    recipient: address
    sender: address
    faceValue: uint256
    winProb: uint256
    senderNonce: uint256
    recipientRandHash: bytes32
    expiry: uint256

struct SenderInfo:
    deposit: uint256
    reserve: uint256
    withdrawAt: uint256

event DepositFunded:
    sender: indexed(address)
    amount: uint256
    deposit: uint256

event ReserveFunded:
    sender: indexed(address)
    amount: uint256
    reserve: uint256

event WinningTicketRedeemed:
    sender: indexed(address)
    recipient: indexed(address)
    ticketHash: indexed(bytes32)
    faceValue: uint256

event Unlocked:
    sender: indexed(address)
    withdrawAt: uint256

event UnlockCancelled:
    sender: indexed(address)

event Withdrawn:
    sender: indexed(address)
    deposit: uint256
    reserve: uint256

event EarningsWithdrawn:
    recipient: indexed(address)
    amount: uint256

EIP712_DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
TICKET_TYPEHASH: constant(bytes32) = keccak256(
    "Ticket(address recipient,address sender,uint256 faceValue,uint256 winProb,"
    "uint256 senderNonce,bytes32 recipientRandHash,uint256 expiry)"
)
DOMAIN_NAME: constant(String[32]) = "Veil TicketBroker"
DOMAIN_VERSION: constant(String[8]) = "1"
# secp256k1 group order // 2 (0x7FFF...5D576E7357A4501DDFE92F46681B20A0)
SECP256K1N_HALF: constant(uint256) = (
    57896044618658097711785492504343953926418782139537452191302581570759080747168
)

token: public(immutable(Token))
unlockDelay: public(immutable(uint256))
DOMAIN_SEPARATOR: public(immutable(bytes32))

senders: HashMap[address, SenderInfo]
earned: public(HashMap[address, uint256])  # all face value ever credited
withdrawn: public(HashMap[address, uint256])  # all ever withdrawn
usedTickets: public(HashMap[bytes32, bool])


@deploy
def __init__(token_: Token, unlockDelay_: uint256):
    token = token_
    unlockDelay = unlockDelay_
    DOMAIN_SEPARATOR = keccak256(
        abi_encode(
            EIP712_DOMAIN_TYPEHASH,
            keccak256(DOMAIN_NAME),
            keccak256(DOMAIN_VERSION),
            chain.id,
            self,
        )
    )


@external
def fundDeposit(amount: uint256):
    assert amount > 0, "zero amount"
    deposit: uint256 = self.senders[msg.sender].deposit + amount
    self.senders[msg.sender].deposit = deposit
    assert extcall token.transferFrom(msg.sender, self, amount), "token transfer failed"
    log DepositFunded(sender=msg.sender, amount=amount, deposit=deposit)


@external
def fundReserve(amount: uint256):
    assert amount > 0, "zero amount"
    reserve: uint256 = self.senders[msg.sender].reserve + amount
    self.senders[msg.sender].reserve = reserve
    assert extcall token.transferFrom(msg.sender, self, amount), "token transfer failed"
    log ReserveFunded(sender=msg.sender, amount=amount, reserve=reserve)


@external
def unlock():
    """@notice Start the unlock delay; tickets stay redeemable until the sender withdraws."""
    info: SenderInfo = self.senders[msg.sender]
    assert info.deposit + info.reserve > 0, "no funds"
    assert info.withdrawAt == 0, "already unlocking"
    withdrawAt: uint256 = block.timestamp + unlockDelay
    self.senders[msg.sender].withdrawAt = withdrawAt
    log Unlocked(sender=msg.sender, withdrawAt=withdrawAt)


@external
def cancelUnlock():
    assert self.senders[msg.sender].withdrawAt != 0, "not unlocking"
    self.senders[msg.sender].withdrawAt = 0
    log UnlockCancelled(sender=msg.sender)


@external
def withdraw():
    info: SenderInfo = self.senders[msg.sender]
    assert info.withdrawAt != 0, "not unlocking"
    assert block.timestamp >= info.withdrawAt, "unlock period not over"
    self.senders[msg.sender] = empty(SenderInfo)
    amount: uint256 = info.deposit + info.reserve
    if amount > 0:
        assert extcall token.transfer(msg.sender, amount), "token transfer failed"
    log Withdrawn(sender=msg.sender, deposit=info.deposit, reserve=info.reserve)


@view
@external
def earnings(recipient: address) -> uint256:
    """@notice Redeemed face value not yet withdrawn."""
    return self.earned[recipient] - self.withdrawn[recipient]


@external
def openEarnings():
    """
    @notice Optional, once: start both of the caller's earnings counters at 1 wei (equal, so
            its earnings stay 0), so its first redemption updates its `earned` slot instead
            of creating it (about 17k gas less, paid here instead, off the hot path).
    """
    assert self.earned[msg.sender] == 0, "earnings already open"
    self.earned[msg.sender] = 1
    self.withdrawn[msg.sender] = 1


@external
def withdrawEarnings():
    earned: uint256 = self.earned[msg.sender]
    amount: uint256 = earned - self.withdrawn[msg.sender]
    assert amount > 0, "no earnings"
    self.withdrawn[msg.sender] = earned
    assert extcall token.transfer(msg.sender, amount), "token transfer failed"
    log EarningsWithdrawn(recipient=msg.sender, amount=amount)


@view
@internal
def _ticketHash(ticket: Ticket) -> bytes32:
    structHash: bytes32 = keccak256(
        abi_encode(
            TICKET_TYPEHASH,
            ticket.recipient,
            ticket.sender,
            ticket.faceValue,
            ticket.winProb,
            ticket.senderNonce,
            ticket.recipientRandHash,
            ticket.expiry,
        )
    )
    return keccak256(concat(b"\x19\x01", DOMAIN_SEPARATOR, structHash))


@pure
@internal
def _recover(digest: bytes32, sig: Bytes[65]) -> address:
    assert len(sig) == 65, "invalid signature"
    r: uint256 = convert(extract32(sig, 0), uint256)
    s: uint256 = convert(extract32(sig, 32), uint256)
    v: uint256 = convert(slice(sig, 64, 1), uint256)
    assert v == 27 or v == 28, "invalid signature"
    assert s <= SECP256K1N_HALF, "invalid signature"
    return ecrecover(digest, v, r, s)


@view
@external
def ticketHash(ticket: Ticket) -> bytes32:
    """@notice The EIP-712 digest the sender signs; also the ticket's replay key."""
    return self._ticketHash(ticket)


@view
@external
def getSender(sender: address) -> SenderInfo:
    return self.senders[sender]


@external
def redeemWinningTicket(ticket: Ticket, sig: Bytes[65], recipientRand: uint256):
    """
    @notice Redeem a winning ticket: the caller must be its recipient. Pays the face value
            from the sender's deposit, then from the reserve, into the caller's earnings.
    """
    assert msg.sender == ticket.recipient, "not ticket recipient"
    assert ticket.faceValue > 0, "zero face value"
    assert block.timestamp <= ticket.expiry, "ticket expired"
    assert keccak256(convert(recipientRand, bytes32)) == ticket.recipientRandHash, (
        "recipientRand mismatch"
    )
    digest: bytes32 = self._ticketHash(ticket)
    assert not self.usedTickets[digest], "ticket already redeemed"
    assert ticket.sender != empty(address), "invalid signature"
    assert self._recover(digest, sig) == ticket.sender, "invalid signature"
    draw: uint256 = convert(keccak256(concat(sig, convert(recipientRand, bytes32))), uint256)
    assert draw < ticket.winProb, "ticket did not win"

    deposit: uint256 = self.senders[ticket.sender].deposit
    if ticket.faceValue <= deposit:
        self.senders[ticket.sender].deposit = deposit - ticket.faceValue
    else:
        reserve: uint256 = self.senders[ticket.sender].reserve
        assert deposit + reserve >= ticket.faceValue, "sender underfunded"
        self.senders[ticket.sender].deposit = 0
        self.senders[ticket.sender].reserve = reserve - (ticket.faceValue - deposit)
    self.usedTickets[digest] = True
    self.earned[msg.sender] += ticket.faceValue
    log WinningTicketRedeemed(
        sender=ticket.sender, recipient=msg.sender, ticketHash=digest, faceValue=ticket.faceValue
    )
