"""The tuned lens (Belrose et al. 2023): a per-layer affine translator fitted so that each layer's
residual stream, decoded through the final norm and unembedding, matches the model's own
next-token distribution; and the KL that says whether it beats the plain logit lens.

:class:`TunedLens` holds the translators ``h -> h + A_l h + b_l`` (``A = b = 0`` is the plain
logit lens, nostalgebraist 2020) and saves them as safetensors + JSON; :func:`fit_tuned_lens`
fits them on retain text with the model frozen; :func:`lens_kl` measures the mean KL to the
final layer on held-out text, through the logit lens (``lens=None``) or a tuned one;
:func:`decode_logprobs` is the one place a residual stream is decoded. Layer ``l`` is the
residual stream *after* block ``l``. :mod:`.lens` scores multiple-choice answers through
either lens.

    >>> lens = fit_tuned_lens(model, org.retain_corpus[:40])       # doctest: +SKIP
    >>> held_out = org.retain_corpus[40:]                          # doctest: +SKIP
    >>> kl = pd.concat([lens_kl(model, None, held_out), lens_kl(model, lens, held_out)])  # doctest: +SKIP
    >>> kl.pivot(index="layer", columns="lens", values="kl")       # layer x {logit, tuned}  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from unlearn_interp import data, models
from unlearn_interp.activations import (
    capture_resid,
    check_batch_size,
    check_layers,
    encode_within_context,
    iter_batches,
    select_positions,
    unembed,
)
from unlearn_interp.artifacts import library_versions, read_json, write_json
from unlearn_interp.checks import check_int, is_int
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.models import Model
from unlearn_interp.training import check_finite
from unlearn_interp.variants import Variant, applied

LOGIT, TUNED = "logit", "tuned"  # the two values of the ``lens`` column
KL_COLUMNS = ("layer", "lens", "kl", "n_tokens")
LENS_NAME = "tuned_lens"  # tuned_lens.safetensors + tuned_lens.json
FORMAT = "unlearn_interp.tuned_lens/1"

# ---------------------------------------------------------------------------------------------
# The tuned lens artifact
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TunedLens:
    """One affine translator per layer: ``apply(l, h) = h + h @ A[i].T + b[i]`` where
    ``layers[i] == l``; float32 on the CPU. ``A = b = 0`` is the plain logit lens.

    >>> lens = TunedLens.zeros([0, 1], d_model=4)
    >>> bool((lens.apply(1, torch.ones(2, 4)) == 1).all())
    True
    """

    layers: tuple[int, ...]
    A: Float[Tensor, "n_lens d_model d_model"]
    b: Float[Tensor, "n_lens d_model"]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        if not self.layers or any(not is_int(x) or x < 0 for x in self.layers):
            raise UnlearnInterpError(f"tuned lens layers {list(self.layers)} must be block indices")
        if len(set(self.layers)) != len(self.layers):
            raise UnlearnInterpError(f"tuned lens layers {list(self.layers)} repeat a layer")
        n, d = len(self.layers), self.b.shape[-1] if self.b.ndim == 2 else -1
        if tuple(self.A.shape) != (n, d, d) or tuple(self.b.shape) != (n, d):
            raise UnlearnInterpError(
                f"a tuned lens over {n} layers needs A [{n}, d, d] and b [{n}, d], got A "
                f"{list(self.A.shape)} and b {list(self.b.shape)}"
            )
        if not (torch.isfinite(self.A).all() and torch.isfinite(self.b).all()):
            raise UnlearnInterpError("the tuned lens has NaN or infinite entries")
        self.A = self.A.detach().to("cpu", torch.float32).contiguous()
        self.b = self.b.detach().to("cpu", torch.float32).contiguous()

    @classmethod
    def zeros(cls, layers: Sequence[int], d_model: int) -> TunedLens:
        """The identity translators (the logit lens), where fitting starts."""
        n = len(layers)
        return cls(tuple(layers), torch.zeros(n, d_model, d_model), torch.zeros(n, d_model))

    @property
    def d_model(self) -> int:
        return int(self.b.shape[1])

    def index(self, layer: int) -> int:
        """Where ``layer``'s translator is in ``A`` and ``b``, else one sentence saying so."""
        if layer not in self.layers:
            raise UnlearnInterpError(
                f"the tuned lens has no translator for layer {layer} (it has {list(self.layers)})"
            )
        return self.layers.index(layer)

    def apply(
        self, layer: int, resid: Float[Tensor, "*batch d_model"]
    ) -> Float[Tensor, "*batch d_model"]:
        """``resid`` (after block ``layer``) translated, computed in float32, returned in its dtype."""
        i = self.index(layer)
        h = resid.float()
        translated = h + h @ self.A[i].to(h.device).T + self.b[i].to(h.device)
        return translated.to(resid.dtype)

    def save(self, path: str | Path) -> Path:
        """Write ``tuned_lens.safetensors`` (``A``, ``b``) and ``tuned_lens.json`` (layers,
        settings) atomically; ``path`` is a directory or a ``.safetensors`` name. Returns the
        safetensors path."""
        tensors_path, json_path = _lens_paths(path)
        models.save_weights({"A": self.A, "b": self.b}, tensors_path)
        write_json(
            json_path,
            {
                "format": FORMAT,
                "layers": list(self.layers),
                "d_model": self.d_model,
                "settings": self.settings,
            },
        )
        return tensors_path

    @classmethod
    def load(cls, path: str | Path) -> TunedLens:
        """Read a lens written by :meth:`save` (safetensors and JSON; nothing is unpickled)."""
        tensors_path, json_path = _lens_paths(path)
        meta = read_json(json_path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UnlearnInterpError(f"{json_path} is not a tuned lens description ({FORMAT})")
        tensors = models.load_weights(tensors_path)
        if set(tensors) != {"A", "b"}:
            raise UnlearnInterpError(f"{tensors_path} must hold exactly the tensors A and b")
        return cls(tuple(meta["layers"]), tensors["A"], tensors["b"], dict(meta["settings"]))


def _lens_paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        return path.with_suffix(".safetensors"), path.with_suffix(".json")
    return path / f"{LENS_NAME}.safetensors", path / f"{LENS_NAME}.json"


# ---------------------------------------------------------------------------------------------
# Decoding a residual stream
# ---------------------------------------------------------------------------------------------


def decode_logprobs(
    model: Model,
    resid: Float[Tensor, "n d_model"],
    layer: int,
    lens: TunedLens | None = None,
) -> Float[Tensor, "n d_vocab"]:
    """Float32 log-softmax over the vocabulary of each row of ``resid`` (after block
    ``layer``), through ``lens``'s translator when given, then the final norm and unembedding."""
    x = resid.to(models.model_device(model), models.model_dtype(model))
    if lens is not None:
        x = lens.apply(layer, x)
    return unembed(model, x[None])[0].float().log_softmax(dim=-1)


def lens_layers(model: Model, layers: Sequence[int] | None) -> list[int]:
    """``layers`` checked, or every block when None."""
    return list(range(models.n_layers(model))) if layers is None else check_layers(model, layers)


def check_lens_covers(lens: TunedLens | None, layers: Sequence[int], model: Model) -> None:
    """Raise one sentence unless ``lens`` (if any) fits the model and has every layer asked."""
    if lens is None:
        return
    if lens.d_model != models.d_model(model):
        raise UnlearnInterpError(
            f"the tuned lens has d_model {lens.d_model} but the model has {models.d_model(model)}"
        )
    for layer in layers:
        lens.index(layer)


# ---------------------------------------------------------------------------------------------
# Fitting the tuned lens and measuring it
# ---------------------------------------------------------------------------------------------


def _final_targets(
    model: Model,
    batch: data.Batch,
    layers: Sequence[int],
    variant: Variant | None,
    select: Bool[Tensor, "batch pos"] | None = None,
) -> tuple[Float[Tensor, "n_layers n_tokens d_model"], Float[Tensor, "n_tokens d_vocab"]]:
    """The residual stream after each of ``layers`` at the ``select``ed tokens of a batch
    (default: every real token), and the model's own next-token log-probabilities there (the
    final layer decoded), without grad."""
    last = models.n_layers(model) - 1
    wanted = list(dict.fromkeys([*layers, last]))
    select = select_positions(batch, "all") if select is None else select
    captured: dict[int, Tensor] = {}

    def keep(index: int, rows: Tensor) -> None:
        captured[wanted[index]] = rows

    capture_resid(model, batch, wanted, select, variant, keep)
    with torch.no_grad(), applied(variant, model):
        target = decode_logprobs(model, captured[last], last)
    return torch.stack([captured[layer] for layer in layers]), target


def _keep_at_most(
    select: Bool[Tensor, "batch pos"], max_tokens: int | None, generator: torch.Generator
) -> Bool[Tensor, "batch pos"]:
    """``select`` with all but ``max_tokens`` of its tokens dropped at random (None: all)."""
    where = select.nonzero()
    if max_tokens is None or len(where) <= max_tokens:
        return select
    chosen = where[torch.randperm(len(where), generator=generator)[:max_tokens].to(where.device)]
    kept = torch.zeros_like(select)
    kept[chosen[:, 0], chosen[:, 1]] = True
    return kept


def _kl_per_token(
    target: Float[Tensor, "n_tokens d_vocab"], logprobs: Float[Tensor, "n_tokens d_vocab"]
) -> Float[Tensor, " n_tokens"]:
    """KL(final || lens) per token, in nats."""
    return (target.exp() * (target - logprobs)).sum(dim=-1)


def _check_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    if not texts:
        raise UnlearnInterpError("the tuned lens needs at least one text; texts is empty")
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise UnlearnInterpError("every text must be a non-empty string")
    return texts


def _check_lr(lr: float) -> float:
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise UnlearnInterpError(f"lr must be a positive finite number, got {lr!r}")
    return float(lr)


def _text_batches(
    model: Model, texts: list[str], steps: int, batch_size: int, max_len: int, seed: int
) -> Iterator[data.Batch]:
    """``steps`` batches of ``batch_size`` texts drawn without replacement (reshuffled after
    each pass over the texts), seeded, on the model's device."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += rng.permutation(len(texts)).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        batch = encode_within_context(model, [texts[i] for i in chosen], max_len)
        yield batch.to(models.model_device(model))


def fit_tuned_lens(
    model: Model,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    steps: int = 200,
    lr: float = 1e-3,
    batch_size: int = 8,
    max_len: int = 64,
    max_tokens: int | None = None,
    seed: int = 0,
    variant: Variant | None = None,
    progress: bool = True,
) -> TunedLens:
    """Fit a tuned lens (Belrose et al. 2023) on ``texts``: per layer, ``A`` and ``b`` (zero at
    the start, so step 0 is the logit lens) minimising KL(the model's next-token distribution
    || the lens's), averaged over every real token, summed over layers, with Adam. The model
    (under ``variant``) is frozen: its forward pass runs without grad and only ``A`` and ``b``
    train. ``max_tokens`` caps the real tokens of a step (drawn at random): the vocabulary-sized
    tensors cost the most on a real model. ``settings`` records the arguments, the first and
    last loss and the seconds taken.

    >>> lens = fit_tuned_lens(model, org.retain_corpus, steps=200)  # doctest: +SKIP
    """
    texts, layers = _check_texts(texts), lens_layers(model, layers)
    steps, max_len = check_int(steps, "steps", minimum=1), check_int(max_len, "max_len", minimum=2)
    check_batch_size(batch_size)
    if max_tokens is not None:
        check_int(max_tokens, "max_tokens", minimum=1)
    lr, started = _check_lr(lr), time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    device, d = models.model_device(model), models.d_model(model)
    A = torch.zeros(len(layers), d, d, device=device, requires_grad=True)
    b = torch.zeros(len(layers), d, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([A, b], lr=lr)
    losses = []
    batches = _text_batches(model, texts, steps, batch_size, max_len, seed)
    for batch in tqdm(batches, total=steps, desc="tuned lens", disable=not progress or None):
        optimizer.zero_grad(set_to_none=True)
        select = _keep_at_most(select_positions(batch, "all"), max_tokens, generator)
        losses.append(_lens_step(model, batch, select, layers, variant, (A, b)))
        optimizer.step()
    settings = {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "max_len": max_len,
        "max_tokens": max_tokens,
        "seed": seed,
        "n_texts": len(texts),
        "variant": variant.name if variant else None,
        "model_name": models.model_name(model),
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "seconds": time.perf_counter() - started,
        "versions": library_versions(),
    }
    return TunedLens(tuple(layers), A.detach(), b.detach(), settings)


def _lens_step(
    model: Model,
    batch: data.Batch,
    select: Bool[Tensor, "batch pos"],
    layers: Sequence[int],
    variant: Variant | None,
    translators: tuple[Tensor, Tensor],
) -> float:
    """Accumulate the gradient of the summed per-layer KL at the ``select``ed tokens into the
    translators ``(A, b)`` (one layer's vocabulary-sized tensors at a time); return the loss."""
    A, b = translators
    hidden, target = _final_targets(model, batch, layers, variant, select)
    total = 0.0
    with applied(variant, model):
        for i, layer in enumerate(layers):
            h = hidden[i].float()
            translated = (h + h @ A[i].T + b[i]).to(models.model_dtype(model))
            logprobs = unembed(model, translated[None])[0].float().log_softmax(dim=-1)
            loss = _kl_per_token(target, logprobs).mean()
            check_finite(loss, f"the tuned-lens loss at layer {layer}", "lower the learning rate")
            loss.backward(inputs=[A, b])  # the model's own tensors get no gradient
            total += loss.item()
    return total


def lens_kl(
    model: Model,
    lens: TunedLens | None,
    texts: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    variant: Variant | None = None,
    batch_size: int = 8,
    max_len: int = 64,
) -> pd.DataFrame:
    """Mean KL (nats per real token, float64 sums) from the model's next-token distribution to
    each layer's decoded one on ``texts`` (held-out text), through ``lens``: rows with
    ``lens == "tuned"``, or ``"logit"`` for the plain logit lens when ``lens`` is None.
    Columns: ``layer, lens, kl, n_tokens``; layers default to the lens's (else every block).

    >>> kl = pd.concat([lens_kl(model, None, held_out), lens_kl(model, lens, held_out)])  # doctest: +SKIP
    """
    texts = _check_texts(texts)
    if layers is None and lens is not None:
        layers = list(lens.layers)
    layers = lens_layers(model, layers)
    check_lens_covers(lens, layers, model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    n_tokens = 0
    for _, batch in iter_batches(model, texts, batch_size, max_len, "lens KL"):
        hidden, target = _final_targets(model, batch, layers, variant)
        n_tokens += target.shape[0]
        with torch.no_grad(), applied(variant, model):
            for i, layer in enumerate(layers):
                logprobs = decode_logprobs(model, hidden[i], layer, lens)
                sums[i] += _kl_per_token(target, logprobs).double().sum().cpu()
    name = LOGIT if lens is None else TUNED
    rows = [
        {"layer": layer, "lens": name, "kl": float(sums[i] / n_tokens), "n_tokens": n_tokens}
        for i, layer in enumerate(layers)
    ]
    return pd.DataFrame(rows, columns=list(KL_COLUMNS))


__all__ = [
    "KL_COLUMNS",
    "LOGIT",
    "TUNED",
    "TunedLens",
    "check_lens_covers",
    "decode_logprobs",
    "fit_tuned_lens",
    "lens_kl",
    "lens_layers",
]
