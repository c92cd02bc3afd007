"""The client's token wallet: keeps, hands out once, settles; survives a kill at any byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from veil.client.credits import TokenWallet
from veil.identity.credits.token import Token

NODE_A, NODE_B = "0x" + "aa" * 20, "0x" + "bb" * 20
NOT_AFTER = 2_000_000_000


def tokens(n: int, seed: int = 0) -> list[Token]:
    return [
        Token(bytes([seed, i]) * 16, bytes(32), bytes(32), bytes([seed, i]) * 128) for i in range(n)
    ]


def test_add_take_settle_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "wallet.jsonl"
    wallet = TokenWallet(path)
    wallet.add(NODE_A, tokens(3), NOT_AFTER)
    wallet.add(NODE_B, tokens(1, 1), NOT_AFTER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wallet.balance() == {NODE_A: 3, NODE_B: 1}
    first = wallet.take(NODE_A, 2)
    assert first is not None and wallet.take(NODE_A, 2) is None  # one left
    wallet.settle(first[:1], spent=True)
    wallet.settle(first[1:], spent=False)
    assert wallet.balance() == {NODE_A: 2, NODE_B: 1}
    wallet.close()  # the process ends: its lock goes with it
    again = TokenWallet(path)
    assert again.balance() == {NODE_A: 2, NODE_B: 1} and again.in_doubt == 0
    held = again.take(NODE_A, 2)
    assert held is not None and first[0].id not in {h.id for h in held}


def test_expired_tokens_are_not_offered(tmp_path: Path) -> None:
    now = [1000.0]
    wallet = TokenWallet(tmp_path / "w", clock=lambda: now[0])
    wallet.add(NODE_A, tokens(1), 2000)
    assert wallet.balance() == {NODE_A: 1}
    now[0] = 2001
    assert wallet.balance() == {} and wallet.take(NODE_A, 1) is None


def test_a_kill_at_any_byte_loses_no_token_and_never_offers_a_spent_one(tmp_path: Path) -> None:
    path = tmp_path / "wallet.jsonl"
    wallet = TokenWallet(path)
    bought = tokens(4)
    wallet.add(NODE_A, bought[:2], NOT_AFTER)
    taken = wallet.take(NODE_A, 1)
    assert taken is not None
    wallet.settle(taken, spent=True)
    wallet.add(NODE_A, bought[2:], NOT_AFTER)
    in_flight = wallet.take(NODE_A, 1)  # the process dies before it knows the outcome
    assert in_flight is not None
    data = path.read_bytes()
    lines = data.split(b"\n")
    ends = [k for k, byte in enumerate(data) if byte == 10]  # a line is whole without its \n
    spent_id = taken[0].id
    for cut in range(len(data) + 1):
        (tmp_path / "cut").write_bytes(data[:cut])
        reopened = TokenWallet(tmp_path / "cut")
        whole = sum(end <= cut for end in ends)  # lines whose bytes all survived
        # lines: add, add, take, spent, add, add, take
        added = min(whole, 2) + max(0, min(whole, 6) - 4)
        spent = whole >= 4
        offered = {h.id for h in reopened.take(NODE_A, reopened.balance().get(NODE_A, 0)) or []}
        assert len(offered) == added - spent, (cut, lines[:whole])
        if spent:
            assert spent_id not in offered
        reopened.close()
    os.remove(tmp_path / "cut")
    wallet.close()
    final = TokenWallet(path)
    assert final.in_doubt == 1 and final.balance() == {NODE_A: 3}


def test_the_journal_is_compacted_and_keeps_what_is_live(tmp_path: Path) -> None:
    path = tmp_path / "wallet.jsonl"
    wallet = TokenWallet(path)
    for batch in range(40):  # 40 purchases of 16, all but the last spent: 1,920 lines or so
        wallet.add(NODE_A, tokens(16, batch), NOT_AFTER)
        for _ in range(16 if batch < 39 else 10):
            held = wallet.take(NODE_A, 1)
            assert held is not None
            wallet.settle(held, spent=True)
    open_ = wallet.take(NODE_A, 2)  # handed out when the process dies: in doubt afterwards
    assert open_ is not None
    lines = path.read_bytes().count(b"\n")
    assert lines < 4 * 6 + 1024 + 64, lines  # compacted as it went, not 1,900 lines
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.with_name(f".{path.name}.tmp").exists()
    wallet.close()
    again = TokenWallet(path)
    assert again.balance() == {NODE_A: 6} and again.in_doubt == 2
    ids = [h.id for h in again.take(NODE_A, 6) or []]
    assert ids[-2:] == [h.id for h in open_]  # the ones in doubt are offered last


def test_one_process_owns_a_journal_and_readers_change_nothing(tmp_path: Path) -> None:
    import pytest

    from veil.client.credits import TokenWalletBusy

    path = tmp_path / "wallet.jsonl"
    owner = TokenWallet(path)
    owner.add(NODE_A, tokens(2), NOT_AFTER)
    with pytest.raises(TokenWalletBusy, match="another process"):
        TokenWallet(path)  # a second gateway on this wallet
    before = path.read_bytes()
    reader = TokenWallet(path, readonly=True)  # what `veil status` opens
    assert reader.balance() == {NODE_A: 2}
    with pytest.raises(TokenWalletBusy, match="read-only"):
        reader.take(NODE_A, 1)
    assert path.read_bytes() == before
    owner.close()
    TokenWallet(path).close()  # free again
