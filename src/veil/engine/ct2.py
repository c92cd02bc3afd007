"""The `ctranslate2` backend: the model converted once to CTranslate2 int8, fast on CPUs.

Each request runs on its own worker thread (at most `max_batch` at once; CTranslate2 runs them
in parallel, one replica slot each) with CTranslate2's greedy decoding loop, fed through its
per-step callback, which streams each token and stops the loop on cancel, stop strings, end of
sequence or `max_tokens`. Sampling with a temperature is Veil's own `Sampler` (its per-request
seeded generator) on the logits CTranslate2 returns: when the sampled token differs from
CTranslate2's greedy pick the loop is stopped and restarted from the prompt plus the tokens so
far, so a seed fixes the tokens whatever else runs at the same time.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from veil.engine.backend import Backend, EngineStats, check_prompt_fits
from veil.engine.chat import ChatMessage, encode_chat
from veil.engine.convert import converted_model
from veil.engine.detokenize import IncrementalText
from veil.engine.errors import EngineClosed, EngineError, EngineOverloaded, ModelLoadError
from veil.engine.handle import Failed, Finished, GenerationHandle, TokenDelta
from veil.engine.model import ModelFiles, locate_model, weights_digest
from veil.engine.sampling import Sampler, SamplingParams

__all__ = ["Ct2Engine", "Ct2Model", "load_ct2_model"]

log = logging.getLogger(__name__)


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
    max_batch: int = 8,  # requests run in parallel
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
            inter_threads=max_batch,
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


class Ct2Engine(Backend):
    """Runs up to `max_batch` requests at once on a CTranslate2 generator; thread-safe."""

    kind: ClassVar[str] = "ctranslate2"
    weights_scope: ClassVar[str] = "converted"

    def __init__(
        self,
        model: Ct2Model,
        *,
        max_batch: int = 8,  # requests decoding at once at most
        max_queue: int = 64,  # requests waiting for a slot at most
        context_length: int | None = None,  # tokens per sequence (prompt + completion) at most
    ) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._context_length = min(context_length or model.context_length, model.context_length)
        self.stats = EngineStats()
        self._inbox: queue.Queue[_Request | None] = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._running = 0
        self._workers = [
            threading.Thread(target=self._work, name=f"veil-ct2-{i}", daemon=True)
            for i in range(max_batch)
        ]
        for w in self._workers:
            w.start()

    # --- Backend -------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def weights_sha256(self) -> str:
        return self.model.weights_sha256

    @property
    def weights_source(self) -> str:
        return ", ".join(str(p) for p in self.model.files.weight_files)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def encode_chat(self, messages: list[ChatMessage]) -> list[int]:
        return encode_chat(self.model.tokenizer, messages)

    def submit_chat(
        self, messages: list[ChatMessage], prompt_ids: list[int], params: SamplingParams
    ) -> GenerationHandle:
        return self.submit(prompt_ids, params)

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

    @property
    def idle(self) -> bool:
        return self._running == 0 and self._inbox.empty()

    def close(self, timeout: float = 10.0) -> None:
        self._closed.set()
        for _ in self._workers:
            self._inbox.put(None)
        for w in self._workers:
            w.join(timeout)
        while True:
            try:
                req = self._inbox.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                req.handle.push(Failed(EngineClosed("the engine is shut down")))

    # --- worker threads ------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._closed.is_set():
            req = self._inbox.get()
            if req is None:
                return
            if self._closed.is_set():
                req.handle.push(Failed(EngineClosed("the engine is shut down")))
                continue
            with self._lock:
                self._running += 1
                self.stats.max_batch_seen = max(self.stats.max_batch_seen, self._running)
            try:
                self._generate(req)
            except Exception as exc:  # a failed generation must not kill the worker
                log.exception("generation %d failed", req.handle.id)
                if not req.finished:
                    req.finished = True
                    req.handle.push(Failed(EngineError(f"inference failed: {type(exc).__name__}")))
            finally:
                with self._lock:
                    self._running -= 1

    def _generate(self, req: _Request) -> None:
        handle, sampler = req.handle, req.sampler
        tok = self.model.tokenizer
        greedy = sampler.params.greedy
        failure: list[BaseException] = []

        def on_step(step: Any) -> bool:
            """Called by CTranslate2 per token; True stops its loop."""
            try:
                return self._step(req, step, greedy)
            except BaseException as exc:  # surfaced after the loop
                failure.append(exc)
                return True

        while not req.finished:
            if handle.cancelled:
                self._finish(req, "cancelled")
                return
            if self._closed.is_set():
                req.finished = True
                handle.push(Failed(EngineClosed("the engine is shut down")))
                return
            before = len(req.generated)
            tokens = tok.convert_ids_to_tokens(req.prompt_ids + req.generated)
            self.stats.prefills += 1
            self.model.generator.generate_batch(
                [tokens],
                max_length=req.max_new - len(req.generated) + 1,
                sampling_topk=1,
                end_token=[],
                return_logits_vocab=not greedy,
                include_prompt_in_result=False,
                callback=on_step,
            )
            if failure:
                raise failure[0]
            if len(req.generated) == before and not req.finished:
                raise EngineError("the engine produced no token")

    def _step(self, req: _Request, step: Any, greedy: bool) -> bool:
        if req.finished:
            return True
        if req.handle.cancelled:
            self._finish(req, "cancelled")
            return True
        if self._closed.is_set():
            req.finished = True
            req.handle.push(Failed(EngineClosed("the engine is shut down")))
            return True
        token = int(step.token_id)
        diverged = False
        if not greedy:
            import numpy as np
            import torch

            logits = torch.from_numpy(np.array(step.logits, dtype=np.float32, copy=True)[0])
            picked = req.sampler(logits)
            diverged = picked != token
            token = picked
        self.stats.decode_steps += 1
        with self._lock:
            running = self._running
            self.stats.batch_sizes[running] = self.stats.batch_sizes.get(running, 0) + 1
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
        req.finished = True
        tail = "" if reason == "cancelled" or req.text.stopped else req.text.flush()
        req.handle.push(
            Finished(reason, req.handle.prompt_tokens, req.handle.completion_tokens, tail)
        )
