"""Adaptive RMU (Dang et al., docs/methods.md): the measurements and the RMU retraining sweeps.

Measurements of a model as it is now: :func:`cos_distribution` (cos(u, h) per token),
:func:`forget_norm_by_layer` and :func:`training_curves`. Sweeps on the one engine
(:func:`~unlearn_interp.analysis.sweeps.run_sweep`) that train RMU in place at each point and put
the base weights back before the next: :func:`coefficient_sweep` (accuracy, cos(u, h), MaxLogit
and forget norms at several ``c`` or ``beta``) and :func:`layer_sweep` (fixed ``c`` vs Adaptive
RMU at every layer). :class:`MCQSetup` says how they score multiple choice.

    >>> tables = coefficient_sweep(model, [bio], [wiki], {"bio": items}, cfg, coefs=[6.5, 20, 100],
    ...                            table_dir="runs/sweeps")                # doctest: +SKIP
    >>> plotting.plot_cos_histograms(tables["cos"][tables["cos"]["variant"] == "rmu"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from unlearn_interp import evaluation, models, rmu
from unlearn_interp.activations import Positions, capture_resid, iter_batches, select_positions
from unlearn_interp.analysis.profile import layer_profile, layers_or_all
from unlearn_interp.analysis.sweeps import Point, Scalar, run_sweep, run_sweep_tables
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import Executor
from unlearn_interp.models import Model
from unlearn_interp.variants import Variant, restored_weights

METHOD_FIXED, METHOD_ADAPTIVE = "RMU (fixed c)", "Adaptive RMU"  # plotting.METHOD_COLORS keys
MCQSets = Mapping[str, Sequence[MCQItem]]
Corpora = Sequence[Sequence[str]]  # one list of documents per topic

# ---------------------------------------------------------------------------------------------
# Measurements the sweeps are made of
# ---------------------------------------------------------------------------------------------


def cos_distribution(
    model: Model,
    prompts: Sequence[str],
    vector: Float[Tensor, " d_model"],
    layer: int,
    *,
    variant: Variant | None = None,
    positions: Positions = "all",
    batch_size: int = 16,
    max_len: int | None = None,
) -> pd.DataFrame:
    """cos(vector, h) for every selected token, ``h`` the residual stream after block ``layer``.

    One row per token: ``prompt`` (index into ``prompts``), ``cos``, ``norm`` (``||h||``). With
    ``vector`` an RMU control vector ``u`` this is Adaptive RMU's alignment histogram: as the
    coefficient grows, forget activations line up with ``u`` (cos -> 1).

    >>> cos_distribution(model, forget_prompts, result.control_vectors[0], layer=7)  # doctest: +SKIP
    """
    models.check_layer(model, layer)
    if vector.shape != (models.d_model(model),):
        raise UnlearnInterpError(
            f"vector has shape {tuple(vector.shape)} but the model's d_model is {models.d_model(model)}"
        )
    u = torch.nn.functional.normalize(vector.detach().double().cpu(), dim=-1)
    frames = []
    for start, batch in iter_batches(model, prompts, batch_size, max_len, "cos(u, h)"):
        select = select_positions(batch, positions, first_prompt=start)
        prompt_index = select.nonzero()[:, 0].cpu() + start  # row-major, as activation[select]

        def keep(i: int, rows: Tensor, prompt_index: Tensor = prompt_index) -> None:
            rows = rows.double().cpu()
            norm = rows.norm(dim=-1)
            cos = (rows @ u) / norm.clamp_min(1e-30)
            frames.append(
                pd.DataFrame(
                    {"prompt": prompt_index.numpy(), "cos": cos.numpy(), "norm": norm.numpy()}
                )
            )

        capture_resid(model, batch, [layer], select, variant, keep)
    return pd.concat(frames, ignore_index=True)


def forget_norm_by_layer(
    model: Model,
    prompts: Sequence[str],
    variants: Sequence[Variant] = (),
    *,
    layers: Sequence[int] | None = None,
    positions: Positions = "all",
    batch_size: int = 16,
    max_len: int | None = None,
) -> pd.DataFrame:
    """Mean residual norm on ``prompts`` at every layer, per variant (the model as it is when
    ``variants`` is empty): columns ``method`` (the variant's name), ``layer``, ``forget_norm``,
    ``n_tokens`` -- the table :func:`plotting.plot_forget_norm_by_layer` draws. Masked mean over
    the selected tokens (default: every real token), from :func:`layer_profile`'s single pass.

    >>> forget_norm_by_layer(model, forget_prompts)          # the natural norm  # doctest: +SKIP
    """
    variants = list(variants) or [Variant("model")]
    profile = layer_profile(
        model,
        variants,
        {"forget": prompts},
        positions=positions,
        reference=variants[0].name,
        layers=layers,
        batch_size=batch_size,
        max_len=max_len,
    )
    profile = profile.rename(columns={"variant": "method", "norm": "forget_norm"})
    return profile[["method", "layer", "forget_norm", "n_tokens"]]


def training_curves(result: rmu.RMUResult | pd.DataFrame) -> pd.DataFrame:
    """``RMUResult.history`` checked and sorted by step: the table
    :func:`plotting.plot_training_curves` draws (one row per step, ``topic`` per step).

    >>> plotting.plot_training_curves(training_curves(result))                 # doctest: +SKIP
    """
    history = result.history if isinstance(result, rmu.RMUResult) else result
    missing = [c for c in rmu.HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise UnlearnInterpError(f"the RMU history has no column {missing[0]!r}")
    return history.sort_values("step", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# RMU sweeps: coefficient and layer
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MCQSetup:
    """How the sweeps score multiple choice: ``mode`` and ``prompt_template`` as
    :func:`evaluation.mcq_accuracy` takes them (``prompt_template=None`` keeps its default in
    continuation mode and prompts MaxLogit generation in the letter format)."""

    mode: str = "letter"
    prompt_template: str | None = None
    batch_size: int = 16

    def accuracy_rows(self, model: Model, mcq: MCQSets) -> list[dict[str, Any]]:
        """``{"task", "accuracy", "n"}`` per task of ``mcq``, the model as it is now."""
        extra = {} if self.prompt_template is None else {"prompt_template": self.prompt_template}
        table = evaluation.accuracy_table(
            model, [Variant("model")], mcq, self.mode, self.batch_size, progress=False, **extra
        )
        return table[["task", "accuracy", "n"]].to_dict("records")


@dataclasses.dataclass(frozen=True, eq=False)
class _Retraining:
    """What every RMU sweep point trains: ``model`` in place (the base weights put back after
    each point) on the same corpora, with ``base_cfg`` changed by the point."""

    model: Model
    forget: Corpora
    retain: Corpora
    base_cfg: rmu.RMUConfig

    def config(self, **changes: Any) -> rmu.RMUConfig:
        return rmu.RMUConfig.from_dict({**self.base_cfg.to_dict(), **changes})

    @contextlib.contextmanager
    def trained(self, cfg: rmu.RMUConfig) -> Iterator[rmu.RMUResult]:
        """``model`` trained with RMU inside (yields the result), the base outside."""
        names = [models.mlp_out_param(layer) for layer in cfg.update_layers]
        with restored_weights(self.model, names) as base:  # RMU's frozen copy too (one copy)
            yield rmu.train_rmu(
                self.model, self.forget, self.retain, cfg, progress=False, base_weights=base
            )

    def settings(self, mcq: MCQSets, setup: MCQSetup) -> dict[str, Any]:
        """What a sweep's cached rows depend on (besides the points), to refuse stale tables."""
        return {
            "model": models.model_name(self.model),
            "n_layers": models.n_layers(self.model),
            "d_model": models.d_model(self.model),
            "rmu": self.base_cfg.to_dict(),
            "forget": [len(c) for c in self.forget],
            "retain": [len(c) for c in self.retain],
            "mcq": {task: len(items) for task, items in mcq.items()},
            "setup": dataclasses.asdict(setup),
        }


@dataclasses.dataclass(frozen=True, eq=False)
class _Probes:
    """What the coefficient sweep records about the model at each point (see
    :func:`coefficient_sweep` for the tables)."""

    mcq: MCQSets
    cos_prompts: Sequence[Sequence[str]]
    maxlogit_items: Sequence[MCQItem | str]
    maxlogit_tokens: int
    setup: MCQSetup
    positions: Positions

    TABLES = ("accuracy", "cos", "max_logit", "norms")

    def settings(self) -> dict[str, Any]:
        return {
            "maxlogit_items": len(self.maxlogit_items),
            "maxlogit_tokens": self.maxlogit_tokens,
            "cos_prompts": [len(c) for c in self.cos_prompts],
            "positions": self.positions,
        }

    def tables(
        self, model: Model, layer: int, vectors: Float[Tensor, "n_topics d_model"], label: str
    ) -> dict[str, pd.DataFrame]:
        """Everything the coefficient sweep records about the model as it is now."""
        cos = pd.concat(
            [
                cos_distribution(
                    model,
                    prompts,
                    vectors[t],
                    layer,
                    positions=self.positions,
                    batch_size=self.setup.batch_size,
                ).assign(topic=t)
                for t, prompts in enumerate(self.cos_prompts)
            ],
            ignore_index=True,
        )
        max_logit = evaluation.max_logit(
            model,
            self.maxlogit_items,
            self.maxlogit_tokens,
            batch_size=self.setup.batch_size,
            prompt_template=self.setup.prompt_template,
            progress=False,
        )
        all_prompts = [p for prompts in self.cos_prompts for p in prompts]
        norms = forget_norm_by_layer(
            model, all_prompts, positions=self.positions, batch_size=self.setup.batch_size
        ).assign(method=label)
        return {
            "accuracy": pd.DataFrame(self.setup.accuracy_rows(model, self.mcq)),
            "cos": cos[["topic", "prompt", "cos", "norm"]],
            "max_logit": max_logit,
            "norms": norms,
        }


def coefficient_sweep(
    model: Model,
    forget: Corpora,
    retain: Corpora,
    mcq: MCQSets,
    base_cfg: rmu.RMUConfig,
    coefs: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    *,
    cos_prompts: Sequence[Sequence[str]] | None = None,
    maxlogit_items: Sequence[MCQItem | str] | None = None,
    maxlogit_tokens: int = 30,
    setup: MCQSetup = MCQSetup(),  # noqa: B008 -- frozen, so a shared default is safe
    include_base: bool = True,
    positions: Positions = "all",
    table_dir: str | os.PathLike | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> dict[str, pd.DataFrame]:
    """Train RMU at each steering coefficient ``coefs`` (and Adaptive RMU at each ``betas``) on
    ``model``, measure, and put the base weights back before the next point.

    Returns four long tables; every row starts with the point: ``variant`` ("base", "rmu",
    "adaptive_rmu"), ``coef`` (c, or beta for Adaptive RMU; empty for base), then
    ``coef_name`` ("c"/"beta") and ``steering_coef`` (the c actually used, mean over topics):

    * ``accuracy``: ``task``, ``accuracy``, ``n`` per task of ``mcq`` (both domains);
    * ``cos``: ``topic``, ``prompt``, ``cos``, ``norm`` -- cos(u_t, h) per token of topic
      ``t``'s ``cos_prompts`` (default: its first 32 forget documents) at the RMU layer;
    * ``max_logit``: ``item``, ``step``, ``token``, ``max_logit``, ``entropy`` --
      :func:`evaluation.max_logit` over ``maxlogit_tokens`` greedy tokens per item of
      ``maxlogit_items`` (default: the first 32 items of ``mcq``'s first task);
    * ``norms``: ``method`` (a label), ``layer``, ``forget_norm`` at every layer.

    ``table_dir`` writes ``coef_sweep_<table>.csv`` as it goes and resumes (see
    :func:`run_sweep`); ``executor`` runs the points (default: here, in turn), each worker
    training its own copy of ``model``. Plot with ``plotting.plot_accuracy_vs_coef``, ``plot_cos_histograms``,
    ``plot_maxlogit_histograms`` and ``plot_forget_norm_by_layer``.

    >>> tables = coefficient_sweep(model, [bio], [wiki], {"wmdp_bio": items}, cfg,
    ...                            coefs=[1, 6.5, 20, 100])                  # doctest: +SKIP
    """
    points = _coefficient_points(coefs, betas, include_base)
    run = _Retraining(model, forget, retain, base_cfg)
    probes = _coefficient_probes(
        forget, mcq, cos_prompts, maxlogit_items, maxlogit_tokens, setup, positions
    )
    paths = (
        None
        if table_dir is None
        else {name: Path(table_dir) / f"coef_sweep_{name}.csv" for name in _Probes.TABLES}
    )
    return run_sweep_tables(
        points,
        functools.partial(_coefficient_point, run, probes),
        table_paths=paths,
        settings=run.settings(mcq, setup) | probes.settings(),
        desc="coefficient sweep",
        progress=progress,
        executor=executor,
    )


def _coefficient_points(
    coefs: Sequence[float] | None, betas: Sequence[float] | None, include_base: bool
) -> list[Point]:
    if not coefs and not betas:
        raise UnlearnInterpError("give steering coefficients (coefs) and/or Adaptive RMU betas")
    points: list[Point] = [{"variant": "base", "coef": None}] if include_base else []
    points += [{"variant": "rmu", "coef": float(c)} for c in coefs or ()]
    points += [{"variant": "adaptive_rmu", "coef": float(b)} for b in betas or ()]
    return points


def _coefficient_probes(
    forget: Corpora,
    mcq: MCQSets,
    cos_prompts: Sequence[Sequence[str]] | None,
    maxlogit_items: Sequence[MCQItem | str] | None,
    maxlogit_tokens: int,
    setup: MCQSetup,
    positions: Positions,
) -> _Probes:
    """:class:`_Probes` with the defaults filled in: each topic's first 32 forget documents for
    cos(u, h), the first 32 items of ``mcq``'s first task for MaxLogit."""
    n_topics = len(forget)
    cos_prompts = [list(c[:32]) for c in forget] if cos_prompts is None else cos_prompts
    if len(cos_prompts) != n_topics:
        raise UnlearnInterpError(
            f"cos_prompts needs one prompt list per topic ({n_topics}), got {len(cos_prompts)}"
        )
    if maxlogit_items is None:
        maxlogit_items = list(next(iter(mcq.values())))[:32]
    return _Probes(mcq, cos_prompts, maxlogit_items, maxlogit_tokens, setup, positions)


def _coefficient_point(
    run: _Retraining, probes: _Probes, point: Mapping[str, Scalar]
) -> dict[str, pd.DataFrame]:
    """One point: the base (with the control vectors RMU would draw) or RMU / Adaptive RMU
    trained at ``point["coef"]``, then every table of ``probes``."""
    variant, coef = point["variant"], point["coef"]
    if variant == "base":
        base_cfg = run.base_cfg
        vectors = rmu.make_control_vectors(
            len(run.forget), models.d_model(run.model), base_cfg.control_vector, base_cfg.seed
        )
        tables = probes.tables(run.model, base_cfg.layer, vectors, label="base")
        return {name: t.assign(coef_name=None, steering_coef=np.nan) for name, t in tables.items()}
    if variant == "rmu":
        cfg = run.config(steering_coef=coef, adaptive_beta=None)
        coef_name = "c"
    else:
        cfg = run.config(adaptive_beta=coef)
        coef_name = "beta"
    with run.trained(cfg) as result:
        label = f"{coef_name} = {coef:g}"
        tables = probes.tables(run.model, cfg.layer, result.control_vectors, label=label)
    used = float(result.coefficients.mean())
    return {n: t.assign(coef_name=coef_name, steering_coef=used) for n, t in tables.items()}


def layer_sweep(
    model: Model,
    forget: Corpora,
    retain: Corpora,
    mcq: MCQSets,
    base_cfg: rmu.RMUConfig,
    layers: Sequence[int] | None = None,
    coef: float | None = None,
    beta: float = 5.0,
    *,
    setup: MCQSetup = MCQSetup(),  # noqa: B008 -- frozen, so a shared default is safe
    table_path: str | os.PathLike | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """RMU with a fixed coefficient vs Adaptive RMU at every layer (Dang et al.'s figure).

    At each ``layer`` (default: all; update layers ``layer-2..layer``, clipped at 0) train RMU
    with ``steering_coef=coef`` (default: ``base_cfg``'s) and Adaptive RMU with
    ``c = beta * mean frozen forget norm`` (first batch of each topic), restoring the base
    weights after each. One row per method, layer and task: ``method`` ("RMU (fixed c)" /
    "Adaptive RMU"), ``layer``, ``task``, ``accuracy``, ``n``, ``coef`` (the c used, mean over
    topics), ``forget_norm`` (the frozen model's mean forget-activation norm at that layer over
    the training batches: where it exceeds a fixed c, fixed-c RMU stops working),
    ``final_forget_norm`` and ``final_cos_forget_u`` (the last step of each topic). Plot with
    ``plotting.plot_layer_sweep``. ``executor`` runs the points (see :func:`coefficient_sweep`).

    >>> layer_sweep(model, [bio], [wiki], {"bio": bio_items, "mmlu": mmlu}, cfg, beta=5)  # doctest: +SKIP
    """
    layers = layers_or_all(model, layers)
    coef = base_cfg.steering_coef if coef is None else coef
    points = [
        {"method": method, "layer": layer}
        for layer in layers
        for method in (METHOD_FIXED, METHOD_ADAPTIVE)
    ]
    run = _Retraining(model, forget, retain, base_cfg)
    return run_sweep(
        points,
        functools.partial(_layer_point, run, mcq, coef=coef, beta=beta, setup=setup),
        table_path=table_path,
        settings=run.settings(mcq, setup) | {"coef": coef, "beta": beta},
        desc="layer sweep",
        progress=progress,
        executor=executor,
    )


def _layer_point(
    run: _Retraining,
    mcq: MCQSets,
    point: Mapping[str, Scalar],
    *,
    coef: float | Sequence[float],
    beta: float,
    setup: MCQSetup,
) -> list[dict[str, Any]]:
    """One point: RMU or Adaptive RMU at ``point["layer"]``, its accuracy per task and how it
    trained (coefficient used, frozen and final forget norms, final cos(forget, u))."""
    changes: dict[str, Any] = {"layer": int(point["layer"]), "update_layers": None}
    if point["method"] == METHOD_ADAPTIVE:
        changes["adaptive_beta"] = beta
    else:
        changes |= {"steering_coef": coef, "adaptive_beta": None}
    with run.trained(run.config(**changes)) as result:
        rows = setup.accuracy_rows(run.model, mcq)
    history = result.history
    last = history.groupby("topic").tail(1)
    extra = {
        "coef": float(result.coefficients.mean()),
        "forget_norm": float(history["frozen_forget_norm"].mean()),
        "final_forget_norm": float(last["forget_norm"].mean()),
        "final_cos_forget_u": float(last["cos_forget_u"].mean()),
    }
    return [row | extra for row in rows]


__all__ = [
    "METHOD_ADAPTIVE",
    "METHOD_FIXED",
    "MCQSets",
    "MCQSetup",
    "coefficient_sweep",
    "cos_distribution",
    "forget_norm_by_layer",
    "layer_sweep",
    "training_curves",
]
