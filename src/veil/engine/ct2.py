"""The `ctranslate2` backend: the model converted once to CTranslate2 int8, fast on CPUs.

A dispatcher thread groups waiting requests that decode alike (up to `max_batch`) into one
CTranslate2 `generate_batch` call, run on one of `PARALLEL_BATCHES` batch threads, so a
newcomer waits at most for a slot rather than for a running batch to end. CTranslate2's
per-step callback streams each token and stops a row on cancel, stop strings, end of
sequence or `max_tokens`. Three kinds of batch:

* greedy requests (temperature 0), together: CTranslate2's own argmax;
* unseeded sampled requests with the same temperature and top_p, together: CTranslate2's own
  sampler (random, as no seed was asked for);
* a request with a seed, alone: Veil's own `Sampler` (its per-request seeded generator) on
  the logits CTranslate2 returns; when the sampled token differs from CTranslate2's greedy
  pick the row stops and the request is queued again from its prompt plus the tokens so far,
  so a seed fixes the tokens whatever else runs at the same time. (CTranslate2 4.8 hands the
  logits of every row to row 0's callback only, so such rows are not batched.)

Greedy rows batched together may part from their solo run at a near tie (the batch shape
changes int8 rounding), unlike `builtin`, which decodes the same tokens alone or batched.
A request left unfinished by its batch for any other reason is queued again the same way.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from veil.engine.backend import EngineStats, LocalBackend, check_prompt_fits
from veil.engine.convert import converted_model
from veil.engine.detokenize import IncrementalText
from veil.engine.errors import EngineClosed, EngineError, EngineOverloaded, ModelLoadError
from veil.engine.handle import Failed, Finished, GenerationHandle, TokenDelta
from veil.engine.model import ModelFiles, locate_model, weights_digest
from veil.engine.sampling import Sampler, SamplingParams

__all__ = ["Ct2Engine", "Ct2Model", "load_ct2_model"]

log = logging.getLogger(__name__)

PARALLEL_BATCHES = 4  # batches CTranslate2 runs at once (its inter_threads)


@dataclass
class Ct2Model:
    """A converted model ready to run: CTranslate2 generator, tokenizer and identity."""

    files: ModelFiles  # the source the weights hash covers
    generator: Any  # ctranslate2.Generator
    tokenizer: Any  # transformers tokenizer
    weights_sha256: str
    context_length: int
    eos_token_ids: frozenset[int]
    converted: Path  # the cached conversion

    @property
    def model_id(self) -> str:
        return self.files.model_id


def load_ct2_model(
    path: str | os.PathLike[str] | None = None,
    model_id: str | None = None,
    *,
    threads: int | None = None,  # intra-op threads per request; None = all cores
    quantization: str = "int8_float32",
    progress: Callable[[str], None] | None = None,
) -> Ct2Model:
    """Convert (first time only; cached by weights hash) and load a model for CTranslate2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import ctranslate2
    from transformers import AutoTokenizer, GenerationConfig

    files = locate_model(path, model_id)
    digest = weights_digest(files)
    folder = converted_model(files, digest, quantization, progress)
    tok_dir = folder / "tokenizer"
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        generator = ctranslate2.Generator(
            str(folder / "model"),
            device="cpu",
            compute_type=quantization,
            inter_threads=PARALLEL_BATCHES,
            intra_threads=threads or 0,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the converted model {folder}: {exc}") from exc
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"model {files.model_id} has no chat template")
    eos: set[int] = set()
    sources: list[Any] = [tokenizer.eos_token_id]
    if (tok_dir / "generation_config.json").is_file():
        sources.append(GenerationConfig.from_pretrained(tok_dir).eos_token_id)
    for source in sources:
        if isinstance(source, int):
            eos.add(source)
        elif isinstance(source, list | tuple):
            eos.update(int(t) for t in source)
    if not eos:
        raise ModelLoadError(f"model {files.model_id} defines no end-of-sequence token")
    config = json.loads((tok_dir / "config.json").read_text())
    return Ct2Model(
        files=files,
        generator=generator,
        tokenizer=tokenizer,
        weights_sha256=digest,
        context_length=int(config.get("max_position_embeddings", 2048)),
        eos_token_ids=frozenset(eos),
        converted=folder,
    )


@dataclass
class _Request:
    handle: GenerationHandle
    sampler: Sampler
    text: IncrementalText
    max_new: int
    prompt_ids: list[int]
    generated: list[int] = field(default_factory=list)
    finished: bool = False


class Ct2Engine(LocalBackend):
    """Runs waiting requests in batches of up to `max_batch`, `PARALLEL_BATCHES` batches at
    once, on a CTranslate2 generator; `submit` is thread-safe."""

    kind: ClassVar[str] = "ctranslate2"
    weights_scope: ClassVar[str] = "converted"

    def __init__(
        self,
        model: Ct2Model,
        *,
        max_batch: int = 8,  # requests in one batch at most
        max_queue: int = 64,  # requests waiting for a slot at most
        context_length: int | None = None,  # tokens per sequence (prompt + completion) at most
    ) -> None:
        self.model = self.local = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._context_length = min(context_length or model.context_length, model.context_length)
        self.stats = EngineStats()
        self._inbox: queue.Queue[_Request | None] = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._running = 0  # requests inside a running batch
        self._inflight = 0  # requests submitted and not yet ended
        self._slots = threading.Semaphore(PARALLEL_BATCHES)
        self._batches: set[threading.Thread] = set()
        self._dispatcher = threading.Thread(target=self._dispatch, name="veil-ct2", daemon=True)
        self._dispatcher.start()

    # --- Backend -------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> GenerationHandle:
        """Queue a generation; raises at once if it cannot be served."""
        if self._closed.is_set():
            raise EngineClosed("the engine is shut down")
        n = len(prompt_ids)
        check_prompt_fits(n, self.context_length)
        if self._inbox.qsize() >= self.max_queue:
            raise EngineOverloaded("too many requests are waiting; retry later")
        handle = GenerationHandle(prompt_tokens=n)
        self.stats.requests += 1
        with self._lock:
            self._inflight += 1
        self._inbox.put(
            _Request(
                handle=handle,
                sampler=Sampler(params),
                text=IncrementalText(self.model.tokenizer, params.stop),
                max_new=min(params.max_tokens, self.context_length - n),
                prompt_ids=list(prompt_ids),
            )
        )
        return handle

    def next_logits(self, ids: list[int]) -> Any:
        """The logits of the token after `ids` (a numpy row), from one full forward pass:
        what re-scoring an answer, or telling a near tie, needs."""
        import numpy as np

        out = self.model.generator.forward_batch([self.model.tokenizer.convert_ids_to_tokens(ids)])
        return np.asarray(out)[0, -1]

    @property
    def idle(self) -> bool:
        return self._inflight == 0

    def close(self, timeout: float = 10.0) -> None:
        self._closed.set()
        self._inbox.put(None)
        self._dispatcher.join(timeout)
        for t in list(self._batches):
            t.join(timeout)
        while True:
            try:
                req = self._inbox.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                self._fail(req, EngineClosed("the engine is shut down"))

    # --- dispatcher and batch threads ----------------------------------------------------------
    def _dispatch(self) -> None:
        waiting: deque[_Request] = deque()
        while not self._closed.is_set():
            if not waiting:
                first = self._inbox.get()
                if first is None:
                    return
                waiting.append(first)
            self._slots.acquire()
            while True:  # everything that arrived meanwhile
                try:
                    more = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._inbox.put(None)
                    break
                waiting.append(more)
            if self._closed.is_set():
                self._inbox.queue.extendleft(reversed(waiting))  # close() fails them
                return
            batch = self._take_batch(waiting)
            if not batch:
                self._slots.release()
                continue
            thread = threading.Thread(target=self._run_batch, args=(batch,), daemon=True)
            with self._lock:
                self._running += len(batch)
                self.stats.max_batch_seen = max(self.stats.max_batch_seen, self._running)
                self._batches.add(thread)
            thread.start()

    def _take_batch(self, waiting: deque[_Request]) -> list[_Request]:
        """The next batch: the first waiting request and those that decode like it."""
        batch: list[_Request] = []
        kept: deque[_Request] = deque()
        key = _decoding(waiting[0])
        room = 1 if key[0] == "seeded" else self.max_batch
        while waiting:
            req = waiting.popleft()
            if req.handle.cancelled:
                self._finish(req, "cancelled")
            elif len(batch) < room and _decoding(req) == key:
                batch.append(req)
            else:
                kept.append(req)
        waiting.extend(kept)
        return batch

    def _run_batch(self, batch: list[_Request]) -> None:
        before = [len(r.generated) for r in batch]
        steps = [-1]  # the last decoding step counted
        seeded = _decoding(batch[0])[0] == "seeded"

        def on_step(step: Any) -> bool:
            """Called by CTranslate2 per row and token; True stops that row."""
            req = batch[step.batch_id]
            try:
                if step.step > steps[0]:
                    steps[0] = step.step
                    size = sum(not r.finished for r in batch)
                    self.stats.decode_steps += 1
                    self.stats.batch_sizes[size] = self.stats.batch_sizes.get(size, 0) + 1
                return self._step(req, step, seeded)
            except Exception:
                log.exception("generation %d failed", req.handle.id)
                self._fail(req, EngineError("inference failed"))
                return True

        try:
            tok = self.model.tokenizer
            self.stats.prefills += len(batch)
            kind, temperature, top_p = _decoding(batch[0])
            native = kind == "sampled"
            self.model.generator.generate_batch(
                [tok.convert_ids_to_tokens(r.prompt_ids + r.generated) for r in batch],
                max_length=max(r.max_new - len(r.generated) for r in batch) + 1,
                sampling_topk=0 if native else 1,  # 0: the whole vocabulary
                sampling_temperature=temperature if native else 1.0,
                sampling_topp=top_p if native else 1.0,
                end_token=[],
                return_logits_vocab=seeded,
                include_prompt_in_result=False,
                callback=on_step,
            )
        except Exception as exc:  # a failed batch must not kill the engine
            log.exception("a batch of %d failed", len(batch))
            for req in batch:
                self._fail(req, EngineError(f"inference failed: {type(exc).__name__}"))
        finally:
            with self._lock:
                self._running -= len(batch)
                self._batches.discard(threading.current_thread())
            self._slots.release()
        for req, had in zip(batch, before, strict=True):
            if req.finished:
                continue
            if self._closed.is_set():
                self._fail(req, EngineClosed("the engine is shut down"))
            elif len(req.generated) == had:
                self._fail(req, EngineError("the engine produced no token"))
            else:
                self._inbox.put(req)  # sampled off CTranslate2's path: go on from here

    def _fail(self, req: _Request, error: EngineError) -> None:
        if not req.finished:
            self._end(req)
            req.handle.push(Failed(error))

    def _end(self, req: _Request) -> None:
        req.finished = True
        with self._lock:
            self._inflight -= 1

    def _step(self, req: _Request, step: Any, seeded: bool) -> bool:
        if req.finished:
            return True
        if req.handle.cancelled:
            self._finish(req, "cancelled")
            return True
        if self._closed.is_set():
            self._fail(req, EngineClosed("the engine is shut down"))
            return True
        token = int(step.token_id)
        diverged = False
        if seeded:
            import numpy as np
            import torch

            logits = torch.from_numpy(np.array(step.logits, dtype=np.float32, copy=True)[0])
            picked = req.sampler(logits)
            diverged = picked != token
            token = picked
        return not self._accept(req, token) or diverged

    def _accept(self, req: _Request, token: int) -> bool:
        """Stream one token; say whether the request goes on."""
        handle = req.handle
        req.generated.append(token)
        handle.completion_tokens += 1
        self.stats.tokens_generated += 1
        eos = token in self.model.eos_token_ids and not req.sampler.params.ignore_eos
        delta = "" if eos else req.text.add(token)
        if delta or not eos:
            handle.push(TokenDelta(token, delta))
        if eos or req.text.stopped:
            self._finish(req, "stop")
            return False
        if handle.completion_tokens >= req.max_new:
            self._finish(req, "length")
            return False
        return True

    def _finish(self, req: _Request, reason: str) -> None:
        self._end(req)
        tail = "" if reason == "cancelled" or req.text.stopped else req.text.flush()
        req.handle.push(
            Finished(reason, req.handle.prompt_tokens, req.handle.completion_tokens, tail)
        )


def _decoding(req: _Request) -> tuple[str, float, float]:
    """How a request decodes: ("greedy" | "sampled" | "seeded", temperature, top_p); requests
    with the same value share a batch (a seeded one never does)."""
    p = req.sampler.params
    if p.greedy:
        return ("greedy", 0.0, 1.0)
    return ("sampled" if p.seed is None else "seeded", float(p.temperature), float(p.top_p))
