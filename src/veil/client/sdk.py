"""The official `openai` SDK, unchanged, over Veil's Oblivious HTTP transport.

* `verified_openai(relay, node_id, mode=...)`: verifies the node's descriptor first, pins its
  OHTTP keys and checks every answer's receipt (`veil.client.session`). Use this one.
* `private_openai` / `private_async_openai`: sealed and relayed, but neither the node nor its
  answers are verified (keys are taken from the relay unless `key_check` pins them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from veil.client.session import verified_openai
from veil.client.transport import AsyncOhttpTransport, OhttpTransport, relay_keys_url
from veil.wire.http import INVALID_BASE_URL

if TYPE_CHECKING:
    import openai

__all__ = ["INVALID_BASE_URL", "private_async_openai", "private_openai", "verified_openai"]


def private_openai(relay_url: str, node_id: str, **transport_kwargs: Any) -> openai.OpenAI:
    """An `openai.OpenAI` whose requests are all OHTTP-sealed to `node_id`, sent via the relay."""
    import openai

    transport_kwargs.setdefault("keys_url", relay_keys_url(relay_url, node_id))
    transport = OhttpTransport(relay_url, node_id, **transport_kwargs)
    return openai.OpenAI(
        base_url=INVALID_BASE_URL,
        api_key="veil",  # dropped by the transport; the SDK insists on one
        max_retries=0,
        # openai types its client as httpx2's; httpx's Client is what it accepts at run time
        http_client=httpx.Client(transport=transport),  # type: ignore[arg-type]
    )


def private_async_openai(
    relay_url: str, node_id: str, **transport_kwargs: Any
) -> openai.AsyncOpenAI:
    """The async twin of `private_openai`."""
    import openai

    transport_kwargs.setdefault("keys_url", relay_keys_url(relay_url, node_id))
    transport = AsyncOhttpTransport(relay_url, node_id, **transport_kwargs)
    return openai.AsyncOpenAI(
        base_url=INVALID_BASE_URL,
        api_key="veil",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=transport),  # type: ignore[arg-type]
    )
