# pragma version 0.4.3
"""
@title VeilToken
@notice ERC-20 staking and payment token of the Veil network.
@dev A single minter (the deployer, later governance) creates supply. Anyone may burn
     their own tokens; the registry burns slashed stake and the slasher burns forfeited
     bonds, and `totalBurned` keeps that visible to auditors.
"""

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256

event MinterChanged:
    previous: indexed(address)
    minter: indexed(address)

name: public(String[32])
symbol: public(String[8])
decimals: public(constant(uint8)) = 18

totalSupply: public(uint256)
totalBurned: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
minter: public(address)


@deploy
def __init__(name: String[32], symbol: String[8]):
    self.name = name
    self.symbol = symbol
    self.minter = msg.sender
    log MinterChanged(previous=empty(address), minter=msg.sender)


@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    assert receiver != empty(address), "transfer to zero address"
    balance: uint256 = self.balanceOf[sender]
    assert balance >= amount, "insufficient balance"
    self.balanceOf[sender] = balance - amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=sender, receiver=receiver, value=amount)


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self._transfer(msg.sender, receiver, amount)
    return True


@external
def transferFrom(owner: address, receiver: address, amount: uint256) -> bool:
    allowed: uint256 = self.allowance[owner][msg.sender]
    if allowed != max_value(uint256):
        assert allowed >= amount, "insufficient allowance"
        self.allowance[owner][msg.sender] = allowed - amount
    self._transfer(owner, receiver, amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log Approval(owner=msg.sender, spender=spender, value=amount)
    return True


@external
def mint(receiver: address, amount: uint256):
    assert msg.sender == self.minter, "not minter"
    assert receiver != empty(address), "transfer to zero address"
    self.totalSupply += amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=empty(address), receiver=receiver, value=amount)


@external
def burn(amount: uint256):
    balance: uint256 = self.balanceOf[msg.sender]
    assert balance >= amount, "insufficient balance"
    self.balanceOf[msg.sender] = balance - amount
    self.totalSupply -= amount
    self.totalBurned += amount
    log Transfer(sender=msg.sender, receiver=empty(address), value=amount)


@external
def setMinter(minter: address):
    assert msg.sender == self.minter, "not minter"
    log MinterChanged(previous=self.minter, minter=minter)
    self.minter = minter
