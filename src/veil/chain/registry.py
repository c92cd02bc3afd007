"""`RegistryMirror`: the NodeRegistry's active records, kept current by the registry's events.

Reading every record on every refresh costs one `eth_call` per node: with 1,000 registered
nodes a gateway's or relay's view took about ten seconds of RPC each time, every few seconds.
Every change to a record emits an event naming its operator (registration, endpoint, keys,
attestation, models, stake added, unbonding, withdrawal, slashing), and `active` depends only
on the record (registered, stake against the immutable minimum). So after one full read, a
refresh asks for the registry's logs since the last block it read and re-reads only the
operators they name.

Every read of one refresh is made at one block number, so the logs and the records agree. The
reads go in JSON-RPC batches (`batch_size` calls per HTTP request). A full read runs again
every `full_every_s` and whenever the chain's head goes backwards (a reset or reorg), so a
missed log cannot leave a record wrong for long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from veil.chain.errors import ChainError, ChainUnavailable
from veil.chain.types import ModelEntry, NodeInfo

if TYPE_CHECKING:
    from veil.chain.client import ChainClient

__all__ = ["RegistryMirror"]

_PAGE = 64  # NodeRegistry.MAX_PAGE


def node_info(r: Sequence[Any]) -> NodeInfo:
    """A `getNode` result as the typed record (the operator EIP-55 checksummed)."""
    from eth_utils import to_checksum_address

    return NodeInfo(
        operator=to_checksum_address(r[0]),
        endpoint=str(r[1]),
        ohttp_keys_hash=bytes(r[2]),
        attestation_digest=bytes(r[3]),
        stake=int(r[4]),
        unbonding=int(r[5]),
        unbonding_ends_at=int(r[6]),
        registered=bool(r[7]),
        active=bool(r[8]),
        models=tuple(ModelEntry(str(m[0]), bytes(m[1])) for m in r[9]),
    )


class RegistryMirror:
    """Active node records as of the latest block read; thread-safe."""

    def __init__(
        self,
        client: ChainClient,
        *,
        batch_size: int = 100,
        full_every_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._registry = client.registry
        self._batch_size = batch_size
        self._full_every_s = full_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, NodeInfo] = {}  # lower-case operator -> active record
        self._block = -1  # the block the records are as of
        self._full_at = -float("inf")
        self.full_reads = 0  # how many full reads so far (tests and benchmarks)

    def active_nodes(self) -> list[NodeInfo]:
        """Every active node's record, as of the chain's head now."""
        with self._lock:
            head = int(self._client.block_number())
            stale = self._clock() - self._full_at >= self._full_every_s
            if self._block < 0 or head < self._block or stale:
                self._full_read(head)
            elif head > self._block:
                self._apply_logs(head)
            return list(self._records.values())

    # ------------------------------------------------------------------ reads

    def _full_read(self, block: int) -> None:
        from eth_utils import to_checksum_address

        count = int(self._call_one("operatorCount", [], block)[0])
        pages = self._batch(
            [("activeNodes", [start, _PAGE]) for start in range(0, count, _PAGE)], block
        )
        operators = [to_checksum_address(op) for (page,) in pages for op, _stake in page]
        records = self._read_nodes(operators, block)
        self._records = {r.operator.lower(): r for r in records if r.active}
        self._block = block
        self._full_at = self._clock()
        self.full_reads += 1

    def _apply_logs(self, head: int) -> None:
        logs = self._client._read(
            "eth_getLogs",
            lambda: self._client.w3.eth.get_logs(
                {
                    "address": self._registry.address,
                    "fromBlock": self._block + 1,
                    "toBlock": head,
                }
            ),
        )
        touched: dict[str, str] = {}
        for entry in logs:
            topics = entry.get("topics") or []
            if len(topics) < 2:
                continue  # SlasherSet and the like name no operator
            operator = self._client.w3.to_checksum_address(bytes(topics[1])[-20:])
            touched[operator.lower()] = operator
        for record in self._read_nodes(list(touched.values()), head):
            key = record.operator.lower()
            if record.active:
                self._records[key] = record
            else:
                self._records.pop(key, None)
        self._block = head

    def _read_nodes(self, operators: Sequence[str], block: int) -> list[NodeInfo]:
        results = self._batch([("getNode", [op]) for op in operators], block)
        return [node_info(result[0]) for result in results]

    def _call_one(self, function: str, args: list[Any], block: int) -> Any:
        return self._batch([(function, args)], block)[0]

    def _batch(self, calls: list[tuple[str, list[Any]]], block: int) -> list[Any]:
        """eth_call each (function, args) on the registry at `block`, `batch_size` per HTTP
        request; decoded results in order."""
        from eth_abi import decode
        from eth_utils.abi import get_abi_output_types

        out: list[Any] = []
        tag = hex(block)
        provider: Any = self._client.w3.provider  # an HTTPProvider: it batches
        for i in range(0, len(calls), self._batch_size):
            chunk = calls[i : i + self._batch_size]
            requests = [
                (
                    "eth_call",
                    [{"to": self._registry.address, "data": self._registry.encode_abi(f, a)}, tag],
                )
                for f, a in chunk
            ]
            answers = self._client._read(
                "eth_call", lambda r=requests: provider.make_batch_request(r)
            )
            if not isinstance(answers, list) or len(answers) != len(chunk):
                raise ChainUnavailable(f"the chain RPC refused a batch of {len(chunk)} calls")
            for (function, _args), answer in zip(chunk, answers, strict=True):
                result = answer.get("result") if isinstance(answer, dict) else None
                if not isinstance(result, str):
                    raise ChainError(f"registry {function} failed: {answer!r:.200}")
                types = get_abi_output_types(self._registry.get_function_by_name(function).abi)
                try:
                    out.append(decode(types, bytes.fromhex(result.removeprefix("0x"))))
                except Exception as exc:  # a malformed answer is the RPC's fault, not ours
                    raise ChainUnavailable(f"registry {function}: undecodable answer") from exc
        return out
