"""Converting a model once into CTranslate2's format, cached by the weights hash.

A GGUF file is loaded by transformers (dequantized to fp32, as the `builtin` engine runs it),
saved as a Hugging Face directory in a scratch folder, and converted by CTranslate2's own
converter; a Hugging Face directory is converted directly. The result lives in
`<cache>/ctranslate2/<sha256>-<quantization>/` (`model/` for CTranslate2, `tokenizer/` for the
tokenizer, chat template and generation config), written to a temporary folder and renamed
into place, so a crash never leaves a half-converted model that looks complete. The same
weights hash and quantization always give the same folder: the hash the node declares
(`weights_scope` "converted") covers the source file the conversion started from.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from veil.engine.errors import ModelLoadError
from veil.engine.model import ModelFiles, cache_dir

__all__ = ["CT2_QUANTIZATIONS", "converted_model", "save_dequantized"]

log = logging.getLogger(__name__)

CT2_QUANTIZATIONS = ("int8_float32", "int8", "float32")


def converted_model(
    files: ModelFiles,
    weights_sha256: str,
    quantization: str = "int8_float32",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The cached conversion of `files` (made now when missing); its folder."""
    if quantization not in CT2_QUANTIZATIONS:
        raise ModelLoadError(f"quantization must be one of {', '.join(CT2_QUANTIZATIONS)}")
    root = cache_dir() / "ctranslate2"
    target = root / f"{weights_sha256}-{quantization}"
    if (target / "model" / "model.bin").is_file() and (target / "tokenizer").is_dir():
        return target
    say = progress or (lambda message: log.info("%s", message))
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=root, prefix=".converting-") as scratch:
        work = Path(scratch)
        source = files.directory
        if files.gguf_file is not None:
            say(f"converting {files.gguf_file} for CTranslate2 (once; about a minute): loading")
            source = work / "hf"
            save_dequantized(files, source)
        else:
            say(f"converting {files.directory.name} for CTranslate2 (once)")
        say(f"converting to CTranslate2 {quantization}")
        out = work / "out"
        _convert(source, out / "model", quantization)
        _copy_tokenizer(source, out / "tokenizer")
        try:
            out.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "model" / "model.bin").is_file():
                raise
    say(f"converted in {time.monotonic() - started:.0f} s, cached in {target}")
    return target


def save_dequantized(files: ModelFiles, out: Path) -> None:
    """A GGUF model saved as a Hugging Face directory of fp32 safetensors (with tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True, "gguf_file": files.gguf_file}
    try:
        tokenizer = AutoTokenizer.from_pretrained(files.directory, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(files.directory, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model from {files.directory}: {exc}") from exc
    # The tensors are plain fp32 once loaded; the GGUF marker only blocks saving them.
    setattr(model, "hf_quantizer", None)  # noqa: B010  (typed as a module attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _convert(source: Path, out: Path, quantization: str) -> None:
    from ctranslate2.converters import TransformersConverter

    try:
        TransformersConverter(str(source), load_as_float16=False).convert(
            str(out), quantization=quantization
        )
    except (OSError, ValueError, NotImplementedError) as exc:
        raise ModelLoadError(f"CTranslate2 cannot convert this model: {exc}") from exc


def _copy_tokenizer(source: Path, out: Path) -> None:
    out.mkdir(parents=True)
    for p in source.iterdir():
        if p.is_file() and p.suffix not in (".safetensors", ".bin", ".gguf", ".pt"):
            shutil.copy2(p, out / p.name)
    os.chmod(out, 0o755)
