"""What the explorer page shows: the registry as the gateway verified it, plus the chain's
release log, payments and earnings.

Every list read from the chain is bounded where it is read (the newest `MAX_ROWS` release
entries; tickets redeemed in the last `TICKET_BLOCKS` blocks) and cut to `MAX_ROWS` rows, and
release notes are cut to a length, so a registry or log stuffed with entries cannot make the
page, or the gateway, hold more than a screenful. A read that fails is reported per section (its
error's type), and the rest is still shown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from veil.errors import VeilError

__all__ = ["MAX_ROWS", "explorer_snapshot"]

log = logging.getLogger(__name__)

MAX_ROWS = 200  # per section: the newest entries
TICKET_BLOCKS = 50_000  # redeemed tickets are looked for in this many latest blocks
_MAX_NOTE = 200  # characters of a release note


def _section(read: Callable[[], Any], what: str) -> tuple[Any, str | None]:
    """(value, None), or (None, error type) when `read` fails or the chain lacks it."""
    try:
        return read(), None
    except AttributeError:
        return None, "not available from this chain reader"
    except (VeilError, ValueError, OSError) as err:
        log.info("explorer: reading %s failed: %s", what, type(err).__name__)
        return None, type(err).__name__


def explorer_snapshot(
    chain: Any, nodes: list[dict[str, Any]], wallet: str | None
) -> dict[str, Any]:
    """The explorer's JSON (blocking: call it in a thread). `nodes`: `/veil/status`'s."""
    errors: dict[str, str] = {}
    rows = []
    earnings = _method(chain, "earnings")
    for node in nodes[:MAX_ROWS]:
        earned, err = _section(partial(earnings, node["address"]), "earnings")
        if err:
            errors["earnings"] = err
        rows.append({**node, "earnings": None if earned is None else str(earned)})
    releases, err = _section(partial(_method(chain, "releases"), last=MAX_ROWS), "release log")
    if err:
        errors["releases"] = err
    release_rows = [
        {
            "index": r.index,
            "action": r.action.name.lower(),
            "model_hash": "0x" + r.model_hash.hex(),
            "measurement": "0x" + r.measurement.hex(),
            "ref": r.ref,
            "note": r.note[:_MAX_NOTE],
            "published_at": r.published_at,
            "in_force": r.in_force,
        }
        for r in (releases or [])[-MAX_ROWS:]
    ]
    recent, err = _section(_method(chain, "block_number"), "block number")
    since = None if recent is None else max(0, int(recent) - TICKET_BLOCKS)
    redeemed, err = _section(
        partial(_method(chain, "redeemed_tickets"), from_block=since), "redeemed tickets"
    )
    if err:
        errors["redeemed"] = err
    ticket_rows = [
        {
            "sender": t.sender,
            "recipient": t.recipient,
            "ticket_hash": "0x" + t.ticket_hash.hex(),
            "face_value": str(t.face_value),
            "block": t.block_number,
            "tx_hash": t.tx_hash,
        }
        for t in (redeemed or [])[-MAX_ROWS:]
    ]
    payers = sorted({t["sender"] for t in ticket_rows} | ({wallet} if wallet else set()))
    deposits = []
    for payer in payers[:MAX_ROWS]:
        funds, err = _section(partial(_method(chain, "sender_funds"), payer), "deposits")
        if err:
            errors["deposits"] = err
            continue
        deposits.append(
            {"payer": payer, "deposit": str(funds.deposit), "reserve": str(funds.reserve)}
        )
    return {
        "nodes": rows,
        "releases": release_rows,
        "deposits": deposits,
        "redeemed": ticket_rows,
        "errors": errors,
    }


def _method(chain: Any, name: str) -> Callable[..., Any]:
    """`chain.name`, or a reader that says this chain reader has no such read."""
    found = getattr(chain, name, None)
    if callable(found):
        return found

    def missing(*_: Any, **__: Any) -> Any:
        raise AttributeError(name)

    return missing
