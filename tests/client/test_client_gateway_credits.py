"""The gateway pays with anonymous credits: a fake node that sells tokens (its descriptor
commits the keys), the real relay, the openai SDK. The gateway buys one fixed-size batch with
one ticket, then each request carries a token and no ticket; a key the descriptor does not
commit is refused and the gateway falls back to tickets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from fastapi import Request, Response

from support.gateway import (
    DOMAIN,
    MODEL,
    SECRET_PROMPT,
    TOKEN,
    WEIGHTS,
    FakeChainReader,
    FakeNodeApi,
    RecordingApp,
    approve,
)
from support.net import ServerThread
from veil.chain.payment import PaymentTicket
from veil.client.gateway import GatewayConfig, create_gateway_app
from veil.client.gateway.credits import CreditConfig
from veil.client.payer import Wallet
from veil.identity import ModelEntry, NodeIdentity
from veil.node.credits import SpentSet, TokenDesk, TokenKeyring
from veil.node.descriptor import DescriptorIssuer
from veil.relay.app import RelayConfig, create_relay_app
from veil.relay.directory import Node, StaticNodeDirectory
from veil.wire.http import (
    CREDITS_PATH,
    MEDIA_TOKEN_RESPONSE,
    TICKET_HEADER,
    TOKEN_KEYS_PATH,
    TOKENS_HEADER,
)

BATCH = 16


class TokenSellingNode(FakeNodeApi):
    """FakeNodeApi plus a token desk: `/v1/credits`, the key list, `token_keys` committed."""

    def __init__(self) -> None:
        super().__init__()
        self.desk = TokenDesk(self.address, TokenKeyring(None), SpentSet(None))
        self.committed = self.desk.key_ids
        self.purchases: list[PaymentTicket] = []
        self.issuer = DescriptorIssuer(
            self.identity,
            self.keys,
            endpoint="fake",
            models=[ModelEntry(MODEL, WEIGHTS)],
            token_keys=lambda: self.committed(),
        )
        node = self

        async def keys() -> dict[str, object]:
            return {"keys": node.desk.key_list()}

        async def buy(request: Request) -> Response:
            node.purchases.append(PaymentTicket.from_header(request.headers[TICKET_HEADER]))
            batch = node.desk.parse_batch(await request.body())
            _, sigs = node.desk.issue(batch)
            return Response(sigs, media_type=MEDIA_TOKEN_RESPONSE)

        self.app.add_api_route(TOKEN_KEYS_PATH, keys, methods=["GET"])
        self.app.add_api_route(CREDITS_PATH, buy, methods=["POST"])


class Network:
    def __init__(self) -> None:
        self.chain = FakeChainReader()
        approve(self.chain)
        self.node = TokenSellingNode()
        self.server = ServerThread(self.node.app).__enter__()
        self.chain.register(self.node.address, [(MODEL, WEIGHTS)], 200 * TOKEN)
        self.chain.token_key_ids[self.node.address] = self.node.desk.keyring.current().key_id
        directory = StaticNodeDirectory([Node(self.node.address, self.server.url)])
        self.relay_app = RecordingApp(
            create_relay_app(
                directory, RelayConfig(rate_per_s=1000, burst=1000, allow_private_endpoints=True)
            )
        )
        self.relay = ServerThread(self.relay_app).__enter__()
        self.wallet = Wallet(NodeIdentity.generate().private_key)
        self.chain.deposits[self.wallet.address] = 5 * TOKEN

    def close(self) -> None:
        self.relay.__exit__()
        self.server.__exit__()


@pytest.fixture
def net() -> Iterator[Network]:
    network = Network()
    yield network
    network.close()


def gateway_for(net: Network, tokens: Path) -> ServerThread:
    config = GatewayConfig(credits=CreditConfig(batch=BATCH))
    app = create_gateway_app(
        net.chain, net.relay.url, wallet=net.wallet, config=config, tokens=tokens
    )
    return ServerThread(app)


def ask(server: ServerThread) -> str:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": SECRET_PROMPT}]
    )
    return answer.choices[0].message.content or ""


def test_requests_carry_tokens_bought_in_one_batch(net: Network, tmp_path: Path) -> None:
    import httpx

    with gateway_for(net, tmp_path / "tokens.jsonl") as server:
        for _ in range(3):
            assert ask(server)
        status = httpx.get(server.url + "/veil/status").json()
    [purchase] = net.node.purchases  # one purchase, of the fixed size, with one ticket
    params = net.node.params()
    assert purchase.ticket.face_value == BATCH * params.face_value
    assert purchase.signer(DOMAIN) == net.wallet.address
    assert len(net.node.seen) == 3
    for seen in net.node.seen:
        assert seen["ticket"] is None and TICKET_HEADER not in seen["headers"]
        sent = " ".join(seen["headers"].values())
        assert purchase.header_value() not in sent and purchase.signature.hex() not in sent
        net.node.desk._redeem(seen["headers"][TOKENS_HEADER])  # valid, each spent once here
    assert status["wallet"]["tokens"] == {net.node.address.lower(): BATCH - 3}
    # the wallet outlives the gateway: a new one spends the same tokens
    with gateway_for(net, tmp_path / "tokens.jsonl") as server:
        assert ask(server)
    assert len(net.node.purchases) == 1
    net.node.desk._redeem(net.node.seen[-1]["headers"][TOKENS_HEADER])


@pytest.mark.parametrize("where", ["descriptor", "registry"])
def test_a_key_the_descriptor_or_registry_does_not_commit_is_refused(
    net: Network, tmp_path: Path, where: str
) -> None:
    if where == "descriptor":
        net.node.committed = lambda: (bytes(32),)
    else:  # a key for this buyer alone: in its descriptor, not the registry's current one
        net.chain.token_key_ids[net.node.address] = bytes(range(32))
    with gateway_for(net, tmp_path / "tokens.jsonl") as server:
        assert ask(server)
    assert net.node.purchases == []  # nothing was paid for the uncommitted key
    [seen] = net.node.seen
    assert seen["ticket"] is not None and TOKENS_HEADER not in seen["headers"]


def test_a_receipt_that_does_not_name_the_tokens_spent_is_refused(
    net: Network, tmp_path: Path
) -> None:
    net.node.knob = "zero_ticket"  # signs receipts that name no payment
    refused = pytest.raises(openai.InternalServerError, match="ticket_id")
    with gateway_for(net, tmp_path / "tokens.jsonl") as server, refused:
        ask(server)
    assert net.node.seen and TOKENS_HEADER in net.node.seen[-1]["headers"]


def test_the_relay_sees_sealed_requests_only_in_size_buckets(net: Network, tmp_path: Path) -> None:
    """Prompts of 3 to 230 characters, paid with tokens: every sealed chat request the relay
    carries has one size (the 1 KiB bucket plus OHTTP's fixed framing)."""
    with gateway_for(net, tmp_path / "tokens.jsonl") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        for prompt in ("Hi!", "x" * 5, "A longer question? " * 12):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}]
            )
    chats = [size for path, size in net.relay_app.sizes if path.startswith("/relay/")][-3:]
    assert len(set(chats)) == 1, chats
    assert 0 < chats[0] - 1024 < 100  # the bucket + the OHTTP header and AEAD tag


def test_the_relay_sees_streamed_chunks_of_one_size(net: Network, tmp_path: Path) -> None:
    """Two answers with tokens of very different lengths, streamed: every sealed chunk of a
    token the relay carries has one size, the same for both (the node pads to its bucket)."""
    net.node.knob = "slow"  # one token a tenth of a second apart: one chunk each on the wire
    chunks = []
    with gateway_for(net, tmp_path / "tokens.jsonl") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        for tokens in (["a", "b", "c"], ["a much longer piece", " of answer text", "!" * 40]):
            net.node.tokens = tokens
            stream = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text == "".join(tokens)  # the SDK reads the padded stream as ever
            [sent] = [
                pieces
                for (path, _), pieces in zip(net.relay_app.sizes, net.relay_app.sent, strict=True)
                if path.startswith("/relay/")
            ][-1:]
            chunks.append(sent)
    # head, then the role chunk and the three tokens, then the receipt and [DONE] (bigger)
    assert chunks[0][1:5] == chunks[1][1:5], chunks
    assert len(set(chunks[0][1:5])) == 1, chunks
