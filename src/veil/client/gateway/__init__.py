"""The local OpenAI-compatible gateway: `veil gateway`, for the unchanged `openai` SDK.

    client = openai.OpenAI(base_url="http://127.0.0.1:8787/v1", api_key="unused")

For each `POST /v1/chat/completions` (streamed or not) the gateway

1. checks the request with the parser the node uses (`veil.wire.chat`): a request the node
   would refuse is a 400 here, before any node is chosen or paid;
2. reads the registry and release log from the chain (`veil.client.discovery`, cached a few
   seconds) and keeps the nodes that pass the policy of the request's privacy mode: active
   with enough stake, descriptor verified through the relay, the descriptor's address the
   registered operator's, the served weights hash the registered one and an approved release.
   Nodes are checked in the background with short deadlines; a request with a verified node
   at hand waits for no other node's check, one without waits `check_deadline_s` at most;
3. picks one (`routing.Router`: fewest requests in flight, then lowest time to first byte);
4. attaches a payment ticket from the user's wallet inside the sealed request
   (`veil.client.payer`), and requires the node's receipt to name it;
5. sends the request sealed with OHTTP through the relay and streams the answer back as it
   arrives; the receipt is verified before `[DONE]` (a refused one ends the stream with an
   error event instead), and a whole answer whose receipt fails is never returned;
6. fails over to another node when the chosen one fails before the first byte (connection,
   relay 502/504, node 5xx), marking it down for a while (doubled for each failure in a row);
   a failure mid-stream ends the stream with an error event (`node_failed_mid_stream`) and no
   `[DONE]`, never a silent cut. A relay failure (its own refusal, a broken relay connection)
   marks no node down; mid-stream it ends the stream with `relay_failed_mid_stream`.

Privacy mode: a model suffix (`smollm2-135m-instruct:tee`) or the `x-veil-mode` header;
default `anonymous`; both given and different is a 400. Nothing is weakened silently: when no
node satisfies the mode's policy the answer is a 403 `no_node_satisfies_policy` listing every
node's refusal, and nothing but public descriptor fetches has gone through the relay. It is a
403 when some node is refused by the policy (or registry) and no unavailable node passed the
policy when last checked; a node never seen (unreachable since the gateway started) counts
neither way, so it cannot turn the refusal into a 503 (`Selection.refused_by_policy`). When an
unavailable node did pass the policy, or nothing is known, it is a 503 `no_node_available`.

`mpc` (`smollm2-135m-instruct:mpc`): the gateway itself is the MPC client (`veil.mpc.api`). It
picks three nodes verified under the `mpc` policy whose signed descriptors state a party for
the model with the same protocol (`aby3`) and layer weights, of three distinct operators
(`veil.client.mpc.choose_parties`); tokenizes, embeds and samples here, and sends each node
only its own share, sealed to that node's key, through the relay. Answers have the same
OpenAI shapes as the other modes (`veil.wire.chat`), streamed or whole, with `x-veil-mode: mpc`,
`x-veil-nodes` (the three operators, rank order) and `x-veil-mpc-protocol`, and no receipt (no
node sees the answer, so none can sign it). Fewer than three such nodes is a 503
`mpc_unavailable` and nothing is sent; parties already running a session of this gateway (one
session at a time per party) or another client's give a 503 `mpc_parties_busy` (with
`retry-after`); a party that fails before the first token is a 502 `mpc_party_failed`, after
it an error event (`node_failed_mid_stream`) and no `[DONE]`. Never another mode instead.
MPC requests are not paid: the parties' route takes no ticket yet (docs/mpc.md).

Response headers: `x-veil-node` (operator address), `x-veil-mode`, `x-veil-attestation`
(e.g. `dev; no hardware isolation`), `x-veil-verification` (the checks passed),
`x-veil-receipt-id` (0x hex of the request digest the receipt signs), `x-veil-ticket-id` (when a
ticket was sent) and, for whole answers, `x-veil-receipt: verified`. The body passes unchanged
(with its `veil_receipt`). The caller's own headers are never forwarded.

`GET /v1/models` lists the models of nodes eligible now, each also with its mode suffixes
(`:mpc` where three party nodes would serve it); `GET /veil/status` shows the nodes, their
verification per mode, the MPC party each states, health, and the wallet. Both answer from
what is known within `listing_deadline_s` (half a second): a node still being checked is
listed as such.

The web app (`veil.client.web`): the chat page at `/`, the explorer at `/explorer` (its data at
`GET /veil/explorer`), and the chat history at `/veil/history` (only with `history=`), all
behind the same guard.

No log line carries prompt or answer text.

Layout: `app` (the FastAPI app, request checks, listing), `direct` (the `anonymous` and `tee`
answers: failover, payment, the relayed stream), `mpc` (the `mpc` answers), `routing` (node
health and the choice of node), `common` (settings and what the paths share).
"""

from veil.client.gateway.app import create_gateway_app, split_mode
from veil.client.gateway.common import GatewayConfig
from veil.client.gateway.routing import Router

__all__ = [
    "GatewayConfig",
    "Router",
    "create_gateway_app",
    "split_mode",
]
