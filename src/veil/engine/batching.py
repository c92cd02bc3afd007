"""Continuous batching: one engine thread decodes every active request together, step by step.

Requests join between steps (each prompt is prefilled alone, then its KV cache is left-padded
into the shared batch cache) and leave as soon as they finish or their caller goes away. Pad
positions hold zeros and are masked, so a request decodes the same tokens alone or in a batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import DynamicCache

from veil.engine.backend import EngineStats, LocalBackend, check_prompt_fits
from veil.engine.detokenize import IncrementalText
from veil.engine.errors import EngineClosed, EngineError, EngineOverloaded
from veil.engine.handle import Failed, Finished, GenerationHandle, TokenDelta
from veil.engine.model import LoadedModel
from veil.engine.sampling import Sampler, SamplingParams

__all__ = ["Engine", "EngineStats"]

log = logging.getLogger(__name__)


@dataclass
class _Seq:
    handle: GenerationHandle
    sampler: Sampler
    text: IncrementalText
    max_new: int
    prompt_ids: list[int] = field(default_factory=list)  # emptied once prefilled
    last_token: int = 0
    position: int = 0  # position id of the next input token


class Engine(LocalBackend):
    """The `builtin` backend: owns the model and the decode thread; `submit` is thread-safe."""

    kind: ClassVar[str] = "builtin"
    weights_scope: ClassVar[str] = "loaded"

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch: int = 8,  # sequences decoded together at most
        max_queue: int = 64,  # requests waiting for a batch slot at most
        context_length: int | None = None,  # tokens per sequence (prompt + completion) at most
    ) -> None:
        self.loaded = self.local = loaded
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._context_length = min(context_length or loaded.context_length, loaded.context_length)
        self.stats = EngineStats()
        self._inbox: queue.Queue[_Seq] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="veil-engine", daemon=True)
        self._rows: list[_Seq] = []
        self._pads: list[int] = []
        self._cache: Any = None
        self._cache_len = 0
        self._thread.start()

    # --- public API ----------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> GenerationHandle:
        """Queue a generation; raises at once if it cannot be served."""
        if self._closed.is_set():
            raise EngineClosed("the engine is shut down")
        n = len(prompt_ids)
        check_prompt_fits(n, self.context_length)
        if self._inbox.qsize() >= self.max_queue:
            raise EngineOverloaded("too many requests are waiting; retry later")
        handle = GenerationHandle(prompt_tokens=n)
        seq = _Seq(
            handle=handle,
            sampler=Sampler(params),
            text=IncrementalText(self.loaded.tokenizer, params.stop),
            max_new=min(params.max_tokens, self.context_length - n),
            prompt_ids=list(prompt_ids),
            position=n,
        )
        self.stats.requests += 1
        self._inbox.put(seq)
        return handle

    @property
    def idle(self) -> bool:
        """No request is decoding or waiting."""
        return not self._rows and self._inbox.empty()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the decode thread; requests still running get a `Failed(EngineClosed)` event."""
        self._closed.set()
        self._inbox.put(None)  # type: ignore[arg-type]  # wake the thread
        self._thread.join(timeout)

    # --- engine thread -------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while not self._closed.is_set():
            try:
                self._step()
            except Exception as exc:  # a failed forward pass must not kill the node
                log.exception("engine step failed; failing %d active requests", len(self._rows))
                self._fail_all(EngineError(f"inference failed: {type(exc).__name__}"))
        self._fail_all(EngineClosed("the engine is shut down"))
        while True:
            try:
                seq = self._inbox.get_nowait()
            except queue.Empty:
                break
            if seq is not None:
                seq.handle.push(Failed(EngineClosed("the engine is shut down")))

    def _fail_all(self, error: EngineError) -> None:
        for seq in self._rows:
            seq.handle.push(Failed(error))
        self._rows, self._pads, self._cache, self._cache_len = [], [], None, 0

    def _step(self) -> None:
        self._drop_cancelled()
        block = not self._rows
        while len(self._rows) < self.max_batch:
            try:
                seq = self._inbox.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                break
            block = False
            if seq is None or self._closed.is_set():
                return
            if seq.handle.cancelled:
                seq.handle.push(Finished("cancelled", seq.handle.prompt_tokens, 0))
                continue
            self._prefill(seq)
        if self._rows:
            self._decode()

    def _prefill(self, seq: _Seq) -> None:
        prompt, seq.prompt_ids = seq.prompt_ids, []
        cache = DynamicCache()
        with torch.inference_mode():
            out = self.loaded.model(
                input_ids=torch.tensor([prompt], dtype=torch.long),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.stats.prefills += 1
        if self._accept(seq, out.logits[0, -1]):
            self._join(seq, out.past_key_values, len(prompt))

    def _join(self, seq: _Seq, cache: Any, length: int) -> None:
        """Left-pad the batch cache or the newcomer's cache to a common length and stack them."""
        if self._cache is None:
            self._cache, self._cache_len = cache, length
            self._rows, self._pads = [seq], [0]
            return
        target = max(self._cache_len, length)
        grow, pad_new = target - self._cache_len, target - length
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, grow), _left_pad(new.keys, pad_new)], dim=0)
            old.values = torch.cat(
                [_left_pad(old.values, grow), _left_pad(new.values, pad_new)], dim=0
            )
        self._pads = [p + grow for p in self._pads] + [pad_new]
        self._rows.append(seq)
        self._cache_len = target

    def _decode(self) -> None:
        rows = self._rows
        batch = len(rows)
        mask = torch.ones((batch, self._cache_len + 1), dtype=torch.long)
        for i, pad in enumerate(self._pads):
            if pad:
                mask[i, :pad] = 0
        with torch.inference_mode():
            out = self.loaded.model(
                input_ids=torch.tensor([[s.last_token] for s in rows], dtype=torch.long),
                position_ids=torch.tensor([[s.position] for s in rows], dtype=torch.long),
                attention_mask=mask,
                past_key_values=self._cache,
                use_cache=True,
            )
        self._cache_len += 1
        self.stats.decode_steps += 1
        self.stats.batch_sizes[batch] = self.stats.batch_sizes.get(batch, 0) + 1
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, batch)
        logits = out.logits[:, -1, :]
        keep = [i for i, seq in enumerate(rows) if self._accept(seq, logits[i])]
        if len(keep) < batch:
            self._keep_rows(keep)

    def _accept(self, seq: _Seq, logits: torch.Tensor) -> bool:
        """Sample one token for `seq`, stream it, and say whether the sequence goes on."""
        if seq.handle.cancelled:
            seq.handle.push(
                Finished("cancelled", seq.handle.prompt_tokens, seq.handle.completion_tokens)
            )
            return False
        token = seq.sampler(logits)
        seq.handle.completion_tokens += 1
        self.stats.tokens_generated += 1
        seq.last_token = token
        seq.position += 1
        eos = token in self.loaded.eos_token_ids and not seq.sampler.params.ignore_eos
        delta = "" if eos else seq.text.add(token)
        if delta or not eos:
            seq.handle.push(TokenDelta(token, delta))
        reason = None
        if eos or seq.text.stopped:
            reason = "stop"
        elif seq.handle.completion_tokens >= seq.max_new:
            reason = "length"
        if reason is None:
            return True
        tail = "" if seq.text.stopped else seq.text.flush()
        seq.handle.push(
            Finished(reason, seq.handle.prompt_tokens, seq.handle.completion_tokens, tail)
        )
        return False

    def _drop_cancelled(self) -> None:
        keep = [i for i, seq in enumerate(self._rows) if not seq.handle.cancelled]
        if len(keep) < len(self._rows):
            for seq in self._rows:
                if seq.handle.cancelled:
                    seq.handle.push(
                        Finished(
                            "cancelled", seq.handle.prompt_tokens, seq.handle.completion_tokens
                        )
                    )
            self._keep_rows(keep)

    def _keep_rows(self, keep: list[int]) -> None:
        if not keep:
            self._rows, self._pads, self._cache, self._cache_len = [], [], None, 0
            return
        index = torch.tensor(keep, dtype=torch.long)
        pads = [self._pads[i] for i in keep]
        trim = min(pads)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, trim:, :]
            layer.values = layer.values.index_select(0, index)[:, :, trim:, :]
        self._rows = [self._rows[i] for i in keep]
        self._pads = [p - trim for p in pads]
        self._cache_len -= trim


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Zeros in front of the sequence axis (dim 2) of a [batch, heads, seq, dim] tensor."""
    if n == 0:
        return t
    b, h, _, d = t.shape
    return torch.cat([t.new_zeros((b, h, n, d)), t], dim=2)
