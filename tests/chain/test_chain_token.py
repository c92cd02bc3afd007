"""VeilToken: ERC-20 transfers, allowances, minting and burning."""

import boa


def test_metadata(ledger) -> None:
    assert ledger.token.name() == "Veil"
    assert ledger.token.symbol() == "VEIL"
    assert ledger.token.decimals() == 18
    assert ledger.token.minter() == ledger.deployer


def test_mint_transfer_and_burn(ledger, alice, bob) -> None:
    ledger.mint(alice.address, 100)
    assert ledger.token.totalSupply() == 100
    with boa.env.prank(alice.address):
        assert ledger.token.transfer(bob.address, 30)
    assert ledger.token.balanceOf(alice.address) == 70
    assert ledger.token.balanceOf(bob.address) == 30
    with boa.env.prank(bob.address):
        ledger.token.burn(10)
    assert ledger.token.totalSupply() == 90
    assert ledger.token.totalBurned() == 10
    assert ledger.token.balanceOf(bob.address) == 20


def test_transfer_from_spends_allowance(ledger, alice, bob) -> None:
    ledger.mint(alice.address, 100)
    ledger.approve(alice.address, ledger.token, 0)  # unrelated approval, no effect
    with boa.env.prank(alice.address):
        ledger.token.approve(bob.address, 40)
    with boa.env.prank(bob.address):
        ledger.token.transferFrom(alice.address, bob.address, 25)
    assert ledger.token.allowance(alice.address, bob.address) == 15
    assert ledger.token.balanceOf(bob.address) == 25


def test_infinite_allowance_is_not_spent(ledger, alice, bob) -> None:
    ledger.mint(alice.address, 100)
    with boa.env.prank(alice.address):
        ledger.token.approve(bob.address, 2**256 - 1)
    with boa.env.prank(bob.address):
        ledger.token.transferFrom(alice.address, bob.address, 60)
    assert ledger.token.allowance(alice.address, bob.address) == 2**256 - 1


def test_transfer_failures(ledger, alice, bob, unchanged) -> None:
    ledger.mint(alice.address, 10)
    with unchanged("insufficient balance"), boa.env.prank(alice.address):
        ledger.token.transfer(bob.address, 11)
    with unchanged("transfer to zero address"), boa.env.prank(alice.address):
        ledger.token.transfer("0x" + "00" * 20, 1)
    with unchanged("insufficient allowance"), boa.env.prank(bob.address):
        ledger.token.transferFrom(alice.address, bob.address, 1)
    with unchanged("insufficient balance"), boa.env.prank(alice.address):
        ledger.token.burn(11)


def test_only_minter_mints(ledger, alice, unchanged) -> None:
    with unchanged("not minter"), boa.env.prank(alice.address):
        ledger.token.mint(alice.address, 1)
    with unchanged("transfer to zero address"), boa.env.prank(ledger.deployer):
        ledger.token.mint("0x" + "00" * 20, 1)
    with unchanged("not minter"), boa.env.prank(alice.address):
        ledger.token.setMinter(alice.address)


def test_set_minter_hands_over(ledger, alice) -> None:
    with boa.env.prank(ledger.deployer):
        ledger.token.setMinter(alice.address)
    with boa.env.prank(alice.address):
        ledger.token.mint(alice.address, 5)
    assert ledger.token.balanceOf(alice.address) == 5
    with boa.reverts("not minter"), boa.env.prank(ledger.deployer):
        ledger.token.mint(alice.address, 5)


def test_unchanged_helper_detects_state_changes(ledger, alice, unchanged) -> None:
    """Guard for the `unchanged` fixture itself: a change before the revert is caught."""
    import pytest

    with pytest.raises(AssertionError, match="state changed"), unchanged("not minter"):
        ledger.mint(alice.address, 1)
        with boa.env.prank(alice.address):
            ledger.token.mint(alice.address, 1)
