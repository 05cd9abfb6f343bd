"""RMU (Li et al. 2024) and Adaptive RMU (Dang et al. 2024) on a HookedTransformer.

The loss is the reference's, exactly (SCIENCE.md section 1)::

    L = mse(h_upd(x_F), c_t * u_t) + alpha_t * mse(h_upd(x_R), h_frz(x_R))

where ``h`` is the residual stream after block ``layer`` (``blocks.{layer}.hook_resid_post``; the
reference's layer 7 is the input of block 8), ``mse`` is ``F.mse_loss`` (a mean over batch,
positions *and* ``d_model``), ``u_t`` is one fixed unit control vector per topic (uniform in
[0, 1) before normalising, as the reference draws it) and only the MLP output matrices ``W_out``
of ``update_layers`` train. Step ``i`` uses topic ``i % n_topics`` and that topic's batch
``i // n_topics`` (consecutive documents), as the reference does.

What differs from the reference is the cost, not the result:

* the forward pass stops after block ``layer``; blocks before the first updated layer run once per
  batch without gradient, and only ``first..layer`` run with gradient;
* the frozen model is the same model with the saved base ``W_out`` tensors swapped in for one
  no-grad pass (``torch.func.functional_call``), so there is never a second copy of the model;
* only the trained tensors require grad, and the forget and retain terms are back-propagated one
  after the other, so only one of their graphs is alive at a time;
* ``mask_padding=True`` (the default) excludes padding from both terms; ``False`` is the
  reference's unmasked mean, in which pads are pulled toward ``c * u`` too.

The optimiser is the reference's: AdamW without weight decay and ``eps = 1e-6``
(``transformers.AdamW``'s default; ``RMUConfig.adam_eps``). torch's own default, 1e-8, is not
a detail here: RMU's gradients are tiny, so ``eps`` changes the size of every step.

>>> cfg = RMUConfig(layer=7, steering_coef=6.5, alpha=1200.0, steps=150)     # doctest: +SKIP
>>> result = train_rmu(model, forget=[bio, cyber], retain=[wiki, wiki], cfg=cfg)  # doctest: +SKIP
>>> result.save("runs/zephyr_rmu")                                           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from unlearn_interp import artifacts, data, models
from unlearn_interp.errors import UnlearnInterpError

log = logging.getLogger(__name__)

Number = float | int
PerTopic = Number | Sequence[Number]  # one value for every topic, or one value per topic

CONTROL_VECTOR_KINDS = ("uniform", "gaussian")
HISTORY_COLUMNS = (
    "step",
    "topic",
    "batch",
    "forget_loss",  # mse(h_upd(x_F), c u), unscaled
    "retain_loss",  # mse(h_upd(x_R), h_frz(x_R)), before multiplying by alpha
    "loss",  # forget_loss + alpha * retain_loss: what was minimised
    "forget_norm",  # mean ||h_upd(x_F)|| over real tokens
    "frozen_forget_norm",  # mean ||h_frz(x_F)|| over real tokens
    "cos_forget_frozen",
    "cos_forget_u",
    "cos_retain_frozen",
)

# File names inside a run directory (DESIGN.md, "The run directory").
CONFIG_FILE = "config.json"
CONTROL_VECTORS_FILE = "control_vectors.safetensors"
UNLEARNED_WEIGHTS_FILE = "unlearned_weights.safetensors"
BASE_WEIGHTS_FILE = "base_weights.safetensors"
HISTORY_FILE = "tables/rmu_history.csv"

# AdamW eps of runs saved before RMUConfig had an adam_eps field: torch's default, which
# train_rmu used then.
LEGACY_ADAM_EPS = 1e-8


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RMUConfig:
    """Every setting of an RMU run; defaults are those of the released Zephyr-7B RMU model.

    Per-topic fields (``steering_coef``, ``alpha``, ``max_len``) take one value for all topics or
    a sequence with one value per topic, in the order of ``train_rmu``'s ``forget`` corpora.

    >>> RMUConfig(layer=7).update_layers
    (5, 6, 7)
    >>> RMUConfig(layer=7, alpha=-1.0)
    Traceback (most recent call last):
    unlearn_interp.errors.UnlearnInterpError: RMUConfig.alpha must be >= 0.0, got -1.0
    """

    layer: int  # steer the residual stream after this block (reference: 7 = input of block 8)
    update_layers: Sequence[int] | None = None  # blocks whose W_out trains; None = layer-2..layer
    steering_coef: PerTopic = 6.5  # c: norm of the forget target c*u (ignored if adaptive_beta)
    alpha: PerTopic = 1200.0  # weight of the retain term
    lr: Number = 5e-5  # AdamW learning rate
    adam_eps: Number = 1e-6  # AdamW eps: the reference's transformers.AdamW default; torch's
    # 1e-8 takes other steps, RMU's gradients being small next to eps (runs before: 1e-8)
    batch_size: int = 4  # documents per forget batch and per retain batch
    steps: int = 150  # optimiser steps in total, topics alternating
    max_len: int | Sequence[int] = 512  # forget truncation in tokens (reference: 512 bio, 768
    # cyber); retain text is truncated to the smallest value (reference: 512)
    adaptive_beta: Number | None = None  # Adaptive RMU: c_t = beta * frozen forget norm; None = RMU
    control_vector: str = "uniform"  # "uniform" in [0,1) then normalised (reference) or "gaussian"
    mask_padding: bool = True  # False = the reference's unmasked mean, pads pulled toward c*u too
    seed: int = 42  # seeds the control vectors

    def __post_init__(self) -> None:
        _check_int(self.layer, "layer", minimum=0)
        self._set("update_layers", self._checked_update_layers())
        self._set("steering_coef", _checked_per_topic(self.steering_coef, "steering_coef", 0.0))
        self._set("alpha", _checked_per_topic(self.alpha, "alpha", 0.0, strict=False))
        self._set("max_len", _checked_per_topic(self.max_len, "max_len", 1, integer=True))
        _check_number(self.lr, "lr", 0.0)
        _check_number(self.adam_eps, "adam_eps", 0.0)
        _check_int(self.batch_size, "batch_size", minimum=1)
        _check_int(self.steps, "steps", minimum=1)
        if self.adaptive_beta is not None:
            _check_number(self.adaptive_beta, "adaptive_beta", 0.0)
        if self.control_vector not in CONTROL_VECTOR_KINDS:
            raise UnlearnInterpError(
                f"RMUConfig.control_vector must be one of {CONTROL_VECTOR_KINDS}, "
                f"got {self.control_vector!r}"
            )
        if not isinstance(self.mask_padding, bool):
            raise UnlearnInterpError(
                f"RMUConfig.mask_padding must be True or False, got {self.mask_padding!r}"
            )
        _check_int(self.seed, "seed")
        self.topic_count()  # per-topic fields must agree with each other

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen dataclass's own fields

    def _checked_update_layers(self) -> tuple[int, ...]:
        if self.update_layers is None:
            return tuple(range(max(0, self.layer - 2), self.layer + 1))
        if isinstance(self.update_layers, (str, bytes)) or not isinstance(
            self.update_layers, Sequence
        ):
            raise UnlearnInterpError(
                f"RMUConfig.update_layers must be a list of block indices, got {self.update_layers!r}"
            )
        layers = tuple(self.update_layers)
        for value in layers:
            _check_int(value, "update_layers", minimum=0)
            if value > self.layer:
                raise UnlearnInterpError(
                    f"RMUConfig.update_layers contains {value}, above layer {self.layer}: a block "
                    "after the steered layer cannot change its activations"
                )
        if not layers or len(set(layers)) != len(layers):
            raise UnlearnInterpError(
                f"RMUConfig.update_layers must be non-empty without repeats, got {list(layers)}"
            )
        return tuple(sorted(layers))

    def topic_count(self) -> int | None:
        """The number of topics implied by per-topic fields (None when all are scalars)."""
        counts = {
            name: len(value)
            for name in ("steering_coef", "alpha", "max_len")
            if isinstance(value := getattr(self, name), tuple)
        }
        if len(set(counts.values())) > 1:
            raise UnlearnInterpError(
                f"RMUConfig per-topic fields disagree on the number of topics: {counts}"
            )
        return next(iter(counts.values()), None)

    def per_topic(self, name: str, n_topics: int) -> list[Any]:
        """Field ``name`` as a list with one value per topic.

        >>> RMUConfig(layer=7, alpha=(1200, 350)).per_topic("alpha", 2)
        [1200, 350]
        """
        value = getattr(self, name)
        if not isinstance(value, tuple):
            return [value] * n_topics
        if len(value) != n_topics:
            raise UnlearnInterpError(
                f"RMUConfig.{name} has {len(value)} values but there are {n_topics} topics"
            )
        return list(value)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, values: Any) -> RMUConfig:  # user JSON: checked here
        """Inverse of :meth:`to_dict`; an unknown key is an error naming it, a missing optional
        one takes its default (``adam_eps`` too: a config file asks for a new run; a saved run's
        record is read by :meth:`RMUResult.load`, which knows what older runs used)."""
        if not isinstance(values, Mapping):
            raise UnlearnInterpError(
                f"RMUConfig must be an object of fields, got {type(values).__name__}"
            )
        fields = dataclasses.fields(cls)
        unknown = sorted(map(str, set(values) - {f.name for f in fields}))
        if unknown:
            raise UnlearnInterpError(f"RMUConfig has no field {unknown[0]!r}")
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in values]
        if missing:
            raise UnlearnInterpError(f"RMUConfig field {missing[0]!r} is missing")
        return cls(**dict(values))


def _check_int(value: Any, field: str, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnlearnInterpError(f"RMUConfig.{field} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise UnlearnInterpError(f"RMUConfig.{field} must be >= {minimum}, got {value}")


def _check_number(value: Any, field: str, bound: Number, strict: bool = True) -> None:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value):
        raise UnlearnInterpError(f"RMUConfig.{field} must be a finite number, got {value!r}")
    if value < bound or (strict and value == bound):
        raise UnlearnInterpError(
            f"RMUConfig.{field} must be {'>' if strict else '>='} {bound}, got {value}"
        )


def _checked_per_topic(
    value: Any, field: str, bound: Number, strict: bool = True, integer: bool = False
) -> Any:
    """A scalar stays a scalar; a sequence becomes a non-empty tuple; every value is checked."""
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    for item in values if values is not None else (value,):
        if integer:
            _check_int(item, field, minimum=int(bound))
        else:
            _check_number(item, field, bound, strict)
    if values is not None and not values:
        raise UnlearnInterpError(f"RMUConfig.{field} is an empty list")
    return values if values is not None else value


# ---------------------------------------------------------------------------------------------
# The pieces of the algorithm
# ---------------------------------------------------------------------------------------------


def make_control_vectors(
    n_topics: int, d_model: int, kind: str = "uniform", seed: int = 42
) -> Float[Tensor, "n_topics d_model"]:
    """One unit control vector per topic, from a generator seeded by ``seed`` (float32, CPU).

    ``"uniform"`` draws each coordinate in [0, 1) as the reference does (so ``u`` lies in the
    positive orthant, cosine ~0.87 with the all-ones direction); ``"gaussian"`` draws N(0, 1).

    >>> u = make_control_vectors(2, 4096)
    >>> u.shape, bool(torch.allclose(u.norm(dim=-1), torch.ones(2)))
    (torch.Size([2, 4096]), True)
    """
    if kind not in CONTROL_VECTOR_KINDS:
        raise UnlearnInterpError(f"control vector kind must be one of {CONTROL_VECTOR_KINDS}")
    generator = torch.Generator().manual_seed(seed)
    draw = torch.rand if kind == "uniform" else torch.randn
    vectors = torch.stack([draw(d_model, generator=generator) for _ in range(n_topics)])
    return vectors / vectors.norm(dim=-1, keepdim=True)


def schedule(step: int, n_topics: int) -> tuple[int, int]:
    """``(topic, batch index)`` of training step ``step``: topics alternate, as in the reference.

    >>> [schedule(i, 2) for i in range(4)]
    [(0, 0), (1, 0), (0, 1), (1, 1)]
    """
    return step % n_topics, step // n_topics


def topic_batch(corpus: Sequence[str], index: int, batch_size: int) -> list[str]:
    """Batch ``index`` of ``corpus``: ``batch_size`` consecutive documents, wrapping around.

    >>> topic_batch(["a", "b", "c"], 1, 2)
    ['c', 'a']
    """
    start = index * batch_size
    return [corpus[(start + k) % len(corpus)] for k in range(batch_size)]


def masked_mse(
    x: Float[Tensor, "batch pos d_model"],
    target: Float[Tensor, "batch pos d_model"] | Float[Tensor, " d_model"],
    mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, ""]:
    """``F.mse_loss(x, target)`` in float32; with ``mask``, the mean over real tokens only.

    Without a mask this is exactly the reference's loss (a mean over batch, positions and
    ``d_model``, padding included). With one it is the same mean over the unmasked positions:
    ``sum(mask * (x - target)^2) / (sum(mask) * d_model)``.
    """
    x32 = x.float()
    target32 = target.float().expand_as(x32)
    if mask is None:
        return F.mse_loss(x32, target32)
    weights = mask.to(x32.dtype).unsqueeze(-1)
    return ((x32 - target32).pow(2) * weights).sum() / (weights.sum() * x32.shape[-1])


def rmu_loss(
    h_forget: Float[Tensor, "batch pos d_model"],
    target: Float[Tensor, " d_model"],
    h_retain: Float[Tensor, "batch pos_r d_model"],
    h_retain_frozen: Float[Tensor, "batch pos_r d_model"],
    alpha: float,
    forget_mask: Int[Tensor, "batch pos"] | None = None,
    retain_mask: Int[Tensor, "batch pos_r"] | None = None,
) -> tuple[Float[Tensor, ""], Float[Tensor, ""], Float[Tensor, ""]]:
    """``(loss, forget_loss, retain_loss)`` with ``loss = forget_loss + alpha * retain_loss``.

    ``target`` is ``c * u``. Pass the attention masks to exclude padding, ``None`` for the
    reference's unmasked mean.
    """
    forget_loss = masked_mse(h_forget, target, forget_mask)
    retain_loss = masked_mse(h_retain, h_retain_frozen, retain_mask)
    return forget_loss + alpha * retain_loss, forget_loss, retain_loss


def mean_token_norm(
    h: Float[Tensor, "batch pos d_model"], mask: Int[Tensor, "batch pos"] | None = None
) -> float:
    """Mean L2 norm of the activation over tokens, in float64 (real tokens only with ``mask``).

    This is what Adaptive RMU multiplies by ``beta``.
    """
    return _token_mean(h.double().norm(dim=-1), mask)


def _token_mean(values: Float[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"] | None) -> float:
    if mask is None:
        return values.double().mean().item()
    weights = mask.to(torch.float64)
    return ((values.double() * weights).sum() / weights.sum()).item()


def _cos_mean(
    a: Float[Tensor, "batch pos d_model"],
    b: Float[Tensor, "batch pos d_model"] | Float[Tensor, " d_model"],
    mask: Int[Tensor, "batch pos"],
) -> float:
    a64 = a.double()
    cos = F.cosine_similarity(a64, b.double().expand_as(a64), dim=-1)
    return _token_mean(cos, mask)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RMUResult:
    """What an RMU run produced; enough to rebuild every variant of the model.

    ``base_weights`` and ``unlearned_weights`` hold only the trained tensors (``W_out`` of
    ``config.update_layers``), so ``Variant("rmu", weights=result.unlearned_weights)`` applied to
    the base model is the unlearned model.

    >>> result.save("runs/rmu"); same = RMUResult.load("runs/rmu")      # doctest: +SKIP
    """

    base_weights: dict[str, Tensor]
    unlearned_weights: dict[str, Tensor]
    control_vectors: Float[Tensor, "n_topics d_model"]  # unit, one per topic
    coefficients: Float[Tensor, " n_topics"]  # c_t (fixed, or beta * frozen norm if adaptive)
    config: RMUConfig
    history: pd.DataFrame  # one row per step, columns HISTORY_COLUMNS
    model_info: dict[str, Any] = dataclasses.field(default_factory=dict)  # name, d_model, n_layers

    @property
    def targets(self) -> Float[Tensor, "n_topics d_model"]:
        """The points the forget activations are pulled to: ``c_t * u_t``."""
        return self.coefficients.to(self.control_vectors.dtype).unsqueeze(-1) * self.control_vectors

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the run-directory files of DESIGN.md, each atomically.

        ``config.json`` (config, seed, coefficients, model, library versions; keys other steps
        wrote there are kept), ``control_vectors.safetensors`` (``control_vectors`` and
        ``coefficients``), ``unlearned_weights.safetensors``, ``base_weights.safetensors`` and
        ``tables/rmu_history.csv``.
        """
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        config_path = root / CONFIG_FILE
        record = artifacts.read_json(config_path) if config_path.is_file() else {}
        record.update(self._config_record())
        artifacts.write_json(config_path, record)
        vectors = {"control_vectors": self.control_vectors, "coefficients": self.coefficients}
        meta = {"layer": str(self.config.layer)}
        models.save_weights(vectors, root / CONTROL_VECTORS_FILE, meta)
        models.save_weights(self.unlearned_weights, root / UNLEARNED_WEIGHTS_FILE, meta)
        models.save_weights(self.base_weights, root / BASE_WEIGHTS_FILE, meta)
        with artifacts.atomic_path(root / HISTORY_FILE) as tmp:
            self.history.to_csv(tmp, index=False)
        return root

    def _config_record(self) -> dict[str, Any]:
        return {
            "rmu": self.config.to_dict(),
            "seed": self.config.seed,
            "coefficients": self.coefficients.tolist(),
            "model": dict(self.model_info),
            "library_versions": artifacts.library_versions(),
        }

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RMUResult:
        """Read what :meth:`save` wrote; a missing or malformed file is named in the error."""
        root = Path(directory)
        record = artifacts.read_json(root / CONFIG_FILE)
        if not isinstance(record, dict) or "rmu" not in record:
            raise UnlearnInterpError(f"{root / CONFIG_FILE} has no 'rmu' section")
        vectors = models.load_weights(root / CONTROL_VECTORS_FILE)
        for key in ("control_vectors", "coefficients"):
            if key not in vectors:
                raise UnlearnInterpError(f"{root / CONTROL_VECTORS_FILE} has no tensor {key!r}")
        history_path = root / HISTORY_FILE
        if not history_path.is_file():
            raise UnlearnInterpError(f"{history_path} does not exist")
        settings = record["rmu"]
        if isinstance(settings, Mapping) and "adam_eps" not in settings:
            # Written before the field existed, so trained with torch's default eps: say so,
            # rather than let the new default claim a setting the run never used.
            log.info("%s has no adam_eps: the run used %g", root / CONFIG_FILE, LEGACY_ADAM_EPS)
            settings = {**settings, "adam_eps": LEGACY_ADAM_EPS}
        return cls(
            base_weights=models.load_weights(root / BASE_WEIGHTS_FILE),
            unlearned_weights=models.load_weights(root / UNLEARNED_WEIGHTS_FILE),
            control_vectors=vectors["control_vectors"],
            coefficients=vectors["coefficients"],
            config=RMUConfig.from_dict(settings),
            history=pd.read_csv(history_path),
            model_info=dict(record.get("model", {})),
        )


def train_rmu(
    model: HookedTransformer,
    forget: Sequence[Sequence[str]],
    retain: Sequence[Sequence[str]],
    cfg: RMUConfig,
    control_vectors: Float[Tensor, "n_topics d_model"] | None = None,
    progress: bool = True,
) -> RMUResult:
    """Unlearn ``forget`` (one corpus per topic) while keeping ``retain`` (one per topic).

    Trains ``model`` in place: only ``blocks.{l}.mlp.W_out`` for ``l`` in ``cfg.update_layers``
    change. ``control_vectors`` (``[n_topics, d_model]``, normalised here) replaces the seeded
    draw. On any error, a non-finite loss included, the model is put back on its base weights.
    Parameters' ``requires_grad`` flags are restored on exit.

    >>> cfg = RMUConfig(layer=7, steps=150)                                      # doctest: +SKIP
    >>> result = train_rmu(model, forget=[bio, cyber], retain=[wiki, wiki], cfg=cfg)  # doctest: +SKIP
    >>> result.history[["forget_norm", "cos_retain_frozen"]].tail(1)             # doctest: +SKIP
    """
    n_topics = _check_corpora(forget, retain)
    trainer = _Trainer(
        model, forget, retain, cfg, _control_vectors(model, cfg, n_topics, control_vectors)
    )
    rows = []
    with (
        trainer.training(),
        tqdm(total=cfg.steps, desc="RMU", disable=None if progress else True) as bar,
    ):
        for step in range(cfg.steps):
            rows.append(trainer.step(step))
            bar.set_postfix(
                forget=f"{rows[-1]['forget_loss']:.4g}", retain=f"{rows[-1]['retain_loss']:.3g}"
            )
            bar.update()
    return RMUResult(
        base_weights=trainer.base,
        unlearned_weights=models.snapshot_weights(model, trainer.names),
        control_vectors=trainer.vectors.cpu(),
        coefficients=torch.tensor(trainer.coefficients, dtype=torch.float64),
        config=cfg,
        history=pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)),
        model_info={
            "name": models.model_name(model),
            "d_model": models.d_model(model),
            "n_layers": models.n_layers(model),
        },
    )


def _check_corpora(forget: Sequence[Sequence[str]], retain: Sequence[Sequence[str]]) -> int:
    """Number of topics, after checking both lists hold that many non-empty lists of text."""
    if not forget:
        raise UnlearnInterpError(
            "forget must hold at least one corpus (one list of texts per topic)"
        )
    if len(retain) != len(forget):
        raise UnlearnInterpError(
            f"retain must hold one corpus per forget corpus: got {len(forget)} forget and "
            f"{len(retain)} retain corpora"
        )
    for kind, corpora in (("forget", forget), ("retain", retain)):
        for topic, corpus in enumerate(corpora):
            if isinstance(corpus, str):
                raise UnlearnInterpError(
                    f"{kind} must be a list of corpora (one list of texts per topic), but its "
                    f"item {topic} is a string; wrap a single corpus as [texts]"
                )
            if len(corpus) == 0:
                raise UnlearnInterpError(f"{kind} corpus {topic} is empty")
            bad = next(
                (i for i, text in enumerate(corpus) if not isinstance(text, str) or not text), None
            )
            if bad is not None:
                raise UnlearnInterpError(
                    f"{kind} corpus {topic}, document {bad} is not a non-empty string"
                )
    return len(forget)


def _control_vectors(
    model: HookedTransformer, cfg: RMUConfig, n_topics: int, given: Tensor | None
) -> Tensor:
    width = models.d_model(model)
    if given is None:
        return make_control_vectors(n_topics, width, cfg.control_vector, cfg.seed)
    if tuple(given.shape) != (n_topics, width):
        raise UnlearnInterpError(
            f"control_vectors has shape {tuple(given.shape)}, expected ({n_topics}, {width}) "
            "(one vector of d_model per topic)"
        )
    norms = given.detach().float().cpu().norm(dim=-1, keepdim=True)
    if not torch.isfinite(norms).all() or (norms == 0).any():
        raise UnlearnInterpError("control_vectors contains a zero or non-finite vector")
    return given.detach().float().cpu() / norms


class _Trainer:
    """The state of one RMU run: which tensors train, their base values, targets, optimiser."""

    def __init__(
        self,
        model: HookedTransformer,
        forget: Sequence[Sequence[str]],
        retain: Sequence[Sequence[str]],
        cfg: RMUConfig,
        vectors: Tensor,
    ) -> None:
        models.check_layer(model, cfg.layer, "layer")
        for layer in cfg.update_layers:
            models.check_layer(model, layer, "update_layers")
        if model.tokenizer is None:
            raise UnlearnInterpError(
                "the model has no tokenizer; attach one with models.attach_tokenizer"
            )
        if model.cfg.positional_embedding_type == "shortformer":
            raise UnlearnInterpError(
                "shortformer positional embeddings are not supported by train_rmu"
            )
        self.model, self.forget, self.retain, self.cfg = model, forget, retain, cfg
        n_topics = len(forget)
        self.device = model.embed.W_E.device
        self.first = min(cfg.update_layers)
        self.names = [models.mlp_out_param(layer) for layer in cfg.update_layers]
        self.base = models.snapshot_weights(model, self.names)
        self.alphas = [float(a) for a in cfg.per_topic("alpha", n_topics)]
        self.forget_len = [min(n, model.cfg.n_ctx) for n in cfg.per_topic("max_len", n_topics)]
        self.retain_len = min(self.forget_len)
        self.vectors = vectors
        self.coefficients = self._coefficients(n_topics)
        self.targets = [
            (c * vectors[t]).to(device=self.device) for t, c in enumerate(self.coefficients)
        ]
        log.info(
            "RMU: %d topics, %d steps, layer %d, updating W_out of blocks %s, coefficients %s",
            n_topics, cfg.steps, cfg.layer, list(cfg.update_layers),
            [round(c, 4) for c in self.coefficients],
        )  # fmt: skip

    # --- forward passes ------------------------------------------------------------------------

    def encode(self, texts: list[str], max_len: int) -> data.Batch:
        return data.encode_batch(self.model.tokenizer, texts, max_len).to(self.device)

    def prefix(self, batch: data.Batch) -> Tensor:
        """Residual stream entering block ``first`` (no gradient: nothing before it trains)."""
        with torch.no_grad():
            return self.model(
                batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=self.first
            )

    def suffix(self, resid: Tensor, batch: data.Batch) -> Tensor:
        """Blocks ``first..layer`` on top of the prefix: the residual stream after ``layer``."""
        return self.model(
            resid,
            start_at_layer=self.first,
            stop_at_layer=self.cfg.layer + 1,
            attention_mask=batch.attention_mask,
        )

    def frozen_suffix(self, resid: Tensor, batch: data.Batch) -> Tensor:
        """The same blocks with the base ``W_out`` tensors swapped in: the frozen model."""
        with torch.no_grad():
            return torch.func.functional_call(
                self.model,
                self.base,
                args=(resid,),
                kwargs={
                    "start_at_layer": self.first,
                    "stop_at_layer": self.cfg.layer + 1,
                    "attention_mask": batch.attention_mask,
                },
            )

    def _coefficients(self, n_topics: int) -> list[float]:
        """Fixed ``steering_coef``, or ``beta`` times the frozen forget norm on batch 0."""
        if self.cfg.adaptive_beta is None:
            return [float(c) for c in self.cfg.per_topic("steering_coef", n_topics)]
        coefficients = []
        for topic in range(n_topics):
            batch = self.encode(
                topic_batch(self.forget[topic], 0, self.cfg.batch_size), self.forget_len[topic]
            )
            frozen = self.frozen_suffix(self.prefix(batch), batch)
            mask = batch.attention_mask if self.cfg.mask_padding else None
            coefficients.append(self.cfg.adaptive_beta * mean_token_norm(frozen, mask))
        return coefficients

    # --- one step ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Only the trained tensors require grad inside; on any error the base weights return."""
        params = dict(self.model.named_parameters())
        flags = {name: p.requires_grad for name, p in params.items()}
        for name, p in params.items():
            p.requires_grad_(name in self.names)
        trained = [params[name] for name in self.names]
        # transformers.AdamW, which the reference used, defaults to no weight decay, eps 1e-6.
        self.optimizer = torch.optim.AdamW(
            trained, lr=self.cfg.lr, eps=self.cfg.adam_eps, weight_decay=0.0
        )
        try:
            yield
        except BaseException:
            with torch.no_grad():
                for name in self.names:
                    params[name].copy_(self.base[name])
            raise
        finally:
            for p in trained:
                p.grad = None
            for name, p in params.items():
                p.requires_grad_(flags[name])
            del self.optimizer

    def step(self, step: int) -> dict[str, Number]:
        """One optimiser step on topic ``step % n_topics``; returns its history row."""
        topic, index = schedule(step, len(self.forget))
        bs = self.cfg.batch_size
        fb = self.encode(topic_batch(self.forget[topic], index, bs), self.forget_len[topic])
        rb = self.encode(topic_batch(self.retain[topic], index, bs), self.retain_len)
        f0, r0 = self.prefix(fb), self.prefix(rb)
        f_frozen, r_frozen = self.frozen_suffix(f0, fb), self.frozen_suffix(r0, rb)
        f_mask = fb.attention_mask if self.cfg.mask_padding else None
        r_mask = rb.attention_mask if self.cfg.mask_padding else None
        self.optimizer.zero_grad(set_to_none=True)
        # Back-propagate each term on its own, so only one graph is alive at a time; the summed
        # gradient is the same as that of forget_loss + alpha * retain_loss.
        h_f = self.suffix(f0, fb)
        forget_loss = masked_mse(h_f, self.targets[topic], f_mask)
        self._check_finite(forget_loss, step, topic, "forget")
        forget_loss.backward()
        h_r = self.suffix(r0, rb)
        retain_loss = masked_mse(h_r, r_frozen, r_mask)
        self._check_finite(retain_loss, step, topic, "retain")
        (self.alphas[topic] * retain_loss).backward()
        self.optimizer.step()
        with torch.no_grad():
            return self._row(
                step, topic, index, forget_loss, retain_loss, h_f, f_frozen, h_r, r_frozen, fb, rb
            )

    def _check_finite(self, loss: Tensor, step: int, topic: int, term: str) -> None:
        if not torch.isfinite(loss):
            raise UnlearnInterpError(
                f"RMU step {step} (topic {topic}): the {term} loss is {loss.item()}; lower lr or "
                "the steering coefficient (the model is back on its base weights)"
            )

    def _row(
        self, step: int, topic: int, index: int, forget_loss: Tensor, retain_loss: Tensor,
        h_f: Tensor, f_frozen: Tensor, h_r: Tensor, r_frozen: Tensor,
        fb: data.Batch, rb: data.Batch,
    ) -> dict[str, Number]:  # fmt: skip
        f_mask, r_mask = fb.attention_mask, rb.attention_mask  # metrics: real tokens only
        forget, retain = forget_loss.item(), retain_loss.item()
        return {
            "step": step,
            "topic": topic,
            "batch": index,
            "forget_loss": forget,
            "retain_loss": retain,
            "loss": forget + self.alphas[topic] * retain,
            "forget_norm": mean_token_norm(h_f, f_mask),
            "frozen_forget_norm": mean_token_norm(f_frozen, f_mask),
            "cos_forget_frozen": _cos_mean(h_f, f_frozen, f_mask),
            "cos_forget_u": _cos_mean(h_f, self.targets[topic], f_mask),
            "cos_retain_frozen": _cos_mean(h_r, r_frozen, r_mask),
        }
