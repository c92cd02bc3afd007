"""The node's token desk without the model: keys per epoch (0600, grace window), the durable
spent set (crash-cut records, reuse), issuance and every refusal code of redemption."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from veil.identity import NodeIdentity
from veil.identity.credits.token import (
    Token,
    begin_issuance,
    encode_token_header,
    finish_issuance,
    node_challenge,
)
from veil.node.credits import AlreadySpent, SpentSet, TokenDesk, TokenKeyring
from veil.node.errors import PaymentRefused

EPOCH = 3600
NODE = NodeIdentity.generate().address
OTHER = NodeIdentity.generate().address


class Clock:
    def __init__(self, now: float = 1000 * EPOCH + 10) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def buy(desk: TokenDesk, count: int, address: str = NODE) -> list[Token]:
    key = desk.keyring.current()
    pending = [begin_issuance(key.public_key, node_challenge(address)) for _ in range(count)]
    batch = [request.encode() for request, _ in pending]
    desk.check_batch(batch)
    _, sigs = desk.issue(batch)
    return [
        finish_issuance(key.public_key, state, sigs[i * 256 : (i + 1) * 256])
        for i, (_, state) in enumerate(pending)
    ]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def desk(tmp_path: Path, clock: Clock) -> TokenDesk:
    keyring = TokenKeyring(tmp_path, epoch_s=EPOCH, grace_s=600, clock=clock)
    return TokenDesk(NODE, keyring, SpentSet(tmp_path))


def code_of(desk: TokenDesk, header: str) -> str:
    with pytest.raises(PaymentRefused) as info:
        desk._redeem(header)
    assert info.value.status == 402
    return info.value.code


def test_keys_are_private_files_and_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    key = TokenKeyring(tmp_path, epoch_s=EPOCH, clock=clock).current()
    path = tmp_path / f"token-key-{key.epoch}.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = TokenKeyring(tmp_path, epoch_s=EPOCH, clock=clock).current()
    assert again.public_key == key.public_key and again.key_id == key.key_id


def test_rotation_grace_window_and_expiry(desk: TokenDesk, clock: Clock, tmp_path: Path) -> None:
    old = buy(desk, 2)
    first_epoch = desk.keyring.current().epoch
    clock.now = (first_epoch + 1) * EPOCH + 5  # next epoch, inside the grace window
    assert desk.keyring.current().epoch == first_epoch + 1
    desk._redeem(encode_token_header([old[0]]))  # old epoch, within grace: accepted
    clock.now = (first_epoch + 1) * EPOCH + 601  # grace over
    assert code_of(desk, encode_token_header([old[1]])) == "token_unknown_epoch"
    assert not (tmp_path / f"token-key-{first_epoch}.pem").exists()


def test_tokens_pay_once_and_the_spent_set_survives_a_restart(
    desk: TokenDesk, tmp_path: Path, clock: Clock
) -> None:
    tokens = buy(desk, 3)
    desk._redeem(encode_token_header([tokens[0]]))
    assert code_of(desk, encode_token_header([tokens[0]])) == "token_spent"
    assert code_of(desk, encode_token_header([tokens[1], tokens[1]])) == "token_spent"
    restarted = TokenDesk(
        NODE, TokenKeyring(tmp_path, epoch_s=EPOCH, clock=clock), SpentSet(tmp_path)
    )
    assert code_of(restarted, encode_token_header([tokens[0]])) == "token_spent"
    restarted._redeem(encode_token_header([tokens[1]]))  # a refused payment spent nothing


def test_a_crash_cut_record_is_ignored_and_nothing_else_lost(tmp_path: Path) -> None:
    spent = SpentSet(tmp_path)
    spent.spend(7, [b"a" * 32, b"b" * 32])
    with (tmp_path / "spent-7.bin").open("ab") as fh:
        fh.write(b"c" * 20)  # the append a crash cut short: its request was never served
    again = SpentSet(tmp_path)
    assert again.is_spent(7, b"a" * 32) and again.is_spent(7, b"b" * 32)
    assert again.count(7) == 2
    with pytest.raises(AlreadySpent):
        again.spend(7, [b"d" * 32, b"a" * 32])
    assert not again.is_spent(7, b"d" * 32)  # all or nothing


def test_refusal_codes(desk: TokenDesk) -> None:
    good = buy(desk, 2)
    foreign = buy(desk, 1, OTHER)[0]
    forged = Token(good[0].nonce, good[0].challenge_digest, good[0].token_key_id, bytes(256))
    unknown = Token(good[0].nonce, good[0].challenge_digest, bytes(32), good[0].authenticator)
    assert code_of(desk, "not-a-token") == "token_malformed"
    assert code_of(desk, encode_token_header([good[0]])[:-4]) == "token_malformed"
    assert code_of(desk, ",".join([encode_token_header([good[0]])] * 65)) == "token_malformed"
    assert code_of(desk, encode_token_header([forged])) == "token_invalid"
    assert code_of(desk, encode_token_header([unknown])) == "token_unknown_epoch"
    assert code_of(desk, encode_token_header([foreign])) == "token_wrong_node"
    for token in good:  # none of the refusals spent anything
        desk._redeem(encode_token_header([token]))


def test_price_in_tokens(tmp_path: Path, clock: Clock) -> None:
    keyring = TokenKeyring(tmp_path, epoch_s=EPOCH, clock=clock)
    desk = TokenDesk(NODE, keyring, SpentSet(tmp_path), price_tokens=2)
    tokens = buy(desk, 2)
    assert code_of(desk, encode_token_header(tokens[:1])) == "insufficient_tokens"
    assert desk._redeem(encode_token_header(tokens)).count == 2


def test_purchase_batches_are_checked(desk: TokenDesk) -> None:
    with pytest.raises(PaymentRefused) as info:
        desk.parse_batch(b"\x00\x02" + bytes(100))
    assert info.value.status == 400
    with pytest.raises(PaymentRefused):
        desk.parse_batch(bytes(259 * 65))
    other = TokenKeyring(None, epoch_s=EPOCH).current()
    request, _ = begin_issuance(other.public_key, node_challenge(NODE))
    if request.truncated_token_key_id != desk.keyring.current().key_id[-1]:
        with pytest.raises(PaymentRefused) as info:
            desk.check_batch([request.encode()])
        assert info.value.code == "token_key_stale"


def test_config_checks_the_credit_and_shaping_settings() -> None:
    from veil.node.config import NodeConfig, NodeConfigError

    assert NodeConfig().stream_shaping == "pad" and NodeConfig().token_price == 1
    for bad in (
        {"token_epoch_s": 10},
        {"token_grace_s": 90_000},
        {"token_price": 0},
        {"token_batch_max": 0},
        {"stream_shaping": "constant-rate"},
    ):
        with pytest.raises(NodeConfigError):
            NodeConfig(**bad)  # type: ignore[arg-type]
