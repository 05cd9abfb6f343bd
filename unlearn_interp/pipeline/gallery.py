"""The committed figures: every figure of docs/methods.md's papers redrawn on the model organism.

``unlearn-interp figures --out figures/ --size demo`` runs :func:`make_figures`:

* the "RMU is mostly shallow" set from :func:`~unlearn_interp.pipeline.organism_demo.run_demo`'s tables: per-layer cosine to
  base and residual norm before and after ablating the junk direction, the accuracy bars (with
  the random-direction control and the gap recovered), the generations table, the RMU
  training curves and the depth profile (probes, lenses, CKA by layer);
* the Adaptive RMU set from sweeps on the same organism: cos(u, h) and MaxLogit histograms and
  accuracy for several steering coefficients, the forget-activation norm by layer, accuracy by
  unlearning layer for RMU with a fixed coefficient vs Adaptive RMU, and noise sensitivity.

Only PNGs go to ``out`` (HTML files embed plotly.js, ~5 MB each; ``html=True`` writes them to
the work directory). The run directory and the sweep tables are cached in the work directory,
so a rerun only redraws.

    >>> paths = make_figures("figures", size="demo")                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch

from unlearn_interp import analysis, models, organism, plotting, rmu
from unlearn_interp.artifacts import RunFiles, cache_root
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import Executor
from unlearn_interp.pipeline.depth.step import depth_figure
from unlearn_interp.pipeline.depth.summary import read_depth_tables
from unlearn_interp.pipeline.organism_demo import organism_rmu_config, run_demo
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.steps.profile import profile_figures

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GallerySettings:
    """Sweep sizes for one organism size: small enough for a few minutes on 2 CPU cores.

    The sweeps train RMU with the demo's recipe (``organism_demo.organism_rmu_config``) for fewer
    steps; the layer sweep's fixed coefficient is the demo's ``steering_coef``.
    """

    steps: int  # RMU steps at each sweep point
    coefs: tuple[float, ...]  # steering coefficients of the coefficient sweep
    beta: float  # Adaptive RMU's beta in the layer sweep (Dang et al. use 5)
    noise_factors: tuple[float, ...]  # noise std as multiples of ||h|| / sqrt(d_model) at layer 0
    noise_samples: int
    maxlogit_items: int  # hazardous questions whose greedy continuations give MaxLogit
    maxlogit_tokens: int
    histogram_coefs: int  # how many of the coefficients the histograms overlay


GALLERY: dict[str, GallerySettings] = {
    "demo": GallerySettings(
        steps=100, coefs=(30.0, 100.0, 300.0, 1000.0, 3000.0), beta=5.0,
        noise_factors=(0.25, 0.5, 1.0), noise_samples=4, maxlogit_items=48, maxlogit_tokens=30,
        histogram_coefs=3,
    ),
    "test": GallerySettings(
        steps=30, coefs=(30.0, 300.0, 3000.0), beta=5.0, noise_factors=(0.5, 1.0),
        noise_samples=2, maxlogit_items=16, maxlogit_tokens=10, histogram_coefs=3,
    ),
}  # fmt: skip

# Figure file stems, in the order the README would show them, with what each shows.
FIGURES = {
    "layer_cosines_rmu": "cosine to base by layer, base vs RMU (forget and retain prompts)",
    "layer_norms_rmu": "residual norm by layer, base vs RMU: the bump at the RMU layer",
    "layer_cosines_ablated": "the same cosines with the junk direction ablated",
    "layer_norms_ablated": "the same norms with the junk direction ablated",
    "accuracy_bars": "accuracy per domain: base, RMU, RMU ablated, random-direction control",
    "generations": "greedy continuations of hazardous prompts under each variant",
    "training_curves": "RMU losses, forget norm and cosines over training steps",
    "cos_u_histograms": "cos(u, h) on forget prompts for several steering coefficients",
    "maxlogit_histograms": "MaxLogit of generated tokens, base vs RMU at several coefficients",
    "accuracy_vs_coef": "accuracy on both domains as the steering coefficient grows",
    "forget_norm_by_layer": "forget-activation norm by layer, base and each coefficient",
    "accuracy_vs_layer": "accuracy by unlearning layer, RMU with fixed c vs Adaptive RMU",
    "noise_sensitivity": "noise sensitivity Phi of the layers after l",
    "depth_profile": "probes, logit lens, CKA, norm and cosine by layer for every variant",
}


def default_work_dir(size: str, seed: int) -> Path:
    """Where the demo run and the sweep tables are cached: beside the organism cache."""
    return cache_root() / f"figures-{size}-seed{seed}"


def make_figures(
    out_dir: str | os.PathLike,
    size: str = "demo",
    seed: int = 0,
    *,
    work_dir: str | os.PathLike | None = None,
    force: bool = False,
    html: bool = False,
    progress: bool = True,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    executor: Executor | None = None,
) -> list[Path]:
    """Regenerate every figure of :data:`FIGURES` as ``out_dir/<name>.png``; returns the paths.

    The demo run goes to ``work_dir/run`` and the sweep tables to ``work_dir/sweeps``
    (default :func:`default_work_dir`); both are reused on a rerun unless ``force``. Static
    export is required: without kaleido and Chrome/Chromium this fails with one sentence
    saying how to get them. ``device`` and ``dtype`` say where the organism runs (it is
    cached in float32 on the CPU; the committed figures are float32). ``executor`` runs the
    sweeps' points (default: here, in turn; see :mod:`unlearn_interp.executors`).

    >>> make_figures("figures", size="test")                                 # doctest: +SKIP
    [PosixPath('figures/layer_cosines_rmu.png'), ...]
    """
    problem = plotting.static_export_problem()
    if problem is not None:
        raise UnlearnInterpError(
            f"the figures are PNGs and {problem}; {plotting.ENABLE_STATIC_HINT}"
        )
    if size not in GALLERY:
        raise UnlearnInterpError(f"size must be one of {sorted(GALLERY)}, got {size!r}")
    work = Path(work_dir) if work_dir is not None else default_work_dir(size, seed)
    placed = {"device": device, "dtype": dtype}
    figures = demo_set(work / "run", size, seed, force=force, progress=progress, **placed)
    figures |= adaptive_set(
        work / "sweeps", size, seed, force=force, progress=progress, executor=executor, **placed
    )
    return save_all(figures, Path(out_dir), html_dir=work / "html" if html else None)


def save_all(
    figures: dict[str, go.Figure], out_dir: Path, html_dir: Path | None = None
) -> list[Path]:
    """Write each figure as ``out_dir/<name>.png`` (and HTML into ``html_dir``), one browser."""
    written = []
    with _quiet("choreographer", "kaleido"), plotting.static_export():
        for name, fig in figures.items():
            written += plotting.save_figure(fig, out_dir / name, formats=("png",), strict=True)
            if html_dir is not None:
                plotting.save_figure(fig, html_dir / name, formats=("html",))
    log.info("wrote %d figures to %s", len(written), out_dir)
    return written


# ---------------------------------------------------------------------------------------------
# "RMU is mostly shallow": drawn from the demo run's tables
# ---------------------------------------------------------------------------------------------


def demo_set(
    run_dir: Path, size: str, seed: int, *, force: bool = False, progress: bool = True, **placed
) -> dict[str, go.Figure]:
    """The blog's figures from :func:`run_demo`'s run directory (run if missing); ``placed``:
    the organism's ``device`` and ``dtype``."""
    metrics = run_demo(
        run_dir, size=size, seed=seed, force=force, progress=progress, ledger=False, **placed
    )
    layer = metrics["junk_direction"]["layer"]
    run = RunDir(run_dir)
    profile = run.table("layer_profile")
    figures = profile_figures(profile[profile["variant"].isin(["base", "rmu"])], layer)
    figures |= _ablated_profiles(profile, layer)
    figures["accuracy_bars"] = plotting.plot_accuracy_bars(run.table("accuracy"))
    generations = pd.read_csv(run_dir / RunFiles.GENERATIONS, keep_default_na=False)
    figures["generations"] = plotting.generations_table(
        generations, max_chars=160, title="Greedy continuations of hazardous prompts"
    )
    history = pd.read_csv(run_dir / RunFiles.RMU_HISTORY)
    figures["training_curves"] = plotting.plot_training_curves(history)
    figures["depth_profile"] = depth_figure(read_depth_tables(run), profile, layer)
    return {name: figures[name] for name in FIGURES if name in figures}


def _ablated_profiles(profile: pd.DataFrame, layer: int) -> dict[str, go.Figure]:
    """The two after-ablation layer plots, titled with what ablation brings back at ``layer``."""
    after = profile[profile["variant"].isin(["base", "rmu", "rmu_ablated"])]
    at = after[(after["prompt_set"] == "forget") & (after["layer"] == layer)].set_index("variant")
    cos, norm = at["cos_to_reference"], at["norm"] / at.loc["base", "norm"]
    return {
        "layer_cosines_ablated": plotting.plot_layer_cosines(
            after,
            rmu_layer=layer,
            title=f"Junk direction ablated: the forget-prompt cosine to base at layer {layer} "
            f"is back to {cos['rmu_ablated']:.2f} (RMU: {cos['rmu']:.2f})",
        ),
        "layer_norms_ablated": plotting.plot_layer_norms(
            after,
            rmu_layer=layer,
            title=f"Junk direction ablated: the forget-prompt norm at layer {layer} is back to "
            f"{norm['rmu_ablated']:.1f}x base's (RMU: {norm['rmu']:.1f}x)",
        ),
    }


# ---------------------------------------------------------------------------------------------
# Adaptive RMU: sweeps on the organism
# ---------------------------------------------------------------------------------------------


def adaptive_set(
    sweep_dir: Path, size: str, seed: int, *, force: bool = False, progress: bool = True, **placed
) -> dict[str, go.Figure]:
    """Coefficient sweep, layer sweep and noise sensitivity on the organism, then their plots
    (``placed``: the organism's ``device`` and ``dtype``, and the sweeps' ``executor``)."""
    tables = adaptive_tables(sweep_dir, size, seed, force=force, progress=progress, **placed)
    layer = tables["rmu_layer"]
    coef = tables["coef"]
    swept = {name: t[t["variant"] == "rmu"] for name, t in coef.items()}
    shown = _spread(sorted(swept["cos"]["coef"].unique()), GALLERY[size].histogram_coefs)
    maxlogit = coef["max_logit"][
        coef["max_logit"]["coef"].isin(shown) | coef["max_logit"]["coef"].isna()
    ]
    return {
        "cos_u_histograms": plotting.plot_cos_histograms(
            swept["cos"][swept["cos"]["coef"].isin(shown)]
        ),
        "maxlogit_histograms": plotting.plot_maxlogit_histograms(maxlogit),
        "accuracy_vs_coef": plotting.plot_accuracy_vs_coef(swept["accuracy"]),
        "forget_norm_by_layer": plotting.plot_forget_norm_by_layer(coef["norms"], rmu_layer=layer),
        "accuracy_vs_layer": plotting.plot_layer_sweep(tables["layers"], rmu_layer=layer),
        "noise_sensitivity": plotting.plot_noise_sensitivity(tables["noise"], rmu_layer=layer),
    }


def adaptive_tables(
    sweep_dir: Path,
    size: str,
    seed: int,
    *,
    force: bool = False,
    progress: bool = True,
    executor: Executor | None = None,
    **placed,
) -> dict[str, Any]:
    """Run (or resume) the three sweeps, their points on ``executor`` (default: here); tables
    are cached in ``sweep_dir``. ``placed``: the organism's ``device`` and ``dtype``."""
    settings = GALLERY[size]
    org = organism.load_organism(size, seed, progress=progress, **placed)
    if force:
        for stale in sweep_dir.glob("*.sweep.json"):
            stale.unlink()
    cfg = organism_rmu_config(org, seed)
    cfg = rmu.RMUConfig.from_dict({**cfg.to_dict(), "steps": settings.steps})
    setup = analysis.MCQSetup(mode=org.mcq_mode, prompt_template=org.qa_template, batch_size=32)
    corpora = dict(forget=[org.forget_corpus], retain=[org.retain_corpus], mcq=org.mcq)
    coef = analysis.coefficient_sweep(
        org.model,
        **corpora,
        base_cfg=cfg,
        coefs=settings.coefs,
        cos_prompts=[org.hazardous_prompts],
        maxlogit_items=org.hazardous_mcq[: settings.maxlogit_items],
        maxlogit_tokens=settings.maxlogit_tokens,
        setup=setup,
        table_dir=sweep_dir,
        progress=progress,
        executor=executor,
    )
    layers = analysis.layer_sweep(
        org.model,
        **corpora,
        base_cfg=cfg,
        beta=settings.beta,
        setup=setup,
        table_path=sweep_dir / "layer_sweep.csv",
        progress=progress,
        executor=executor,
    )
    noise = analysis.noise_sensitivity(
        org.model,
        org.hazardous_prompts,
        noise_scale=_noise_scales(org, settings.noise_factors),
        n_samples=settings.noise_samples,
        seed=seed,
        table_path=sweep_dir / "noise.csv",
        progress=progress,
        executor=executor,
    )
    return {"coef": coef, "layers": layers, "noise": noise, "rmu_layer": org.rmu_layer}


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise the named loggers to WARNING for a while (the browser behind PNG export logs every
    tab it opens at INFO)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _noise_scales(org: organism.Organism, factors: Sequence[float]) -> list[float]:
    """Absolute noise std (the same at every layer) as multiples of the typical coordinate size
    ``||h|| / sqrt(d_model)`` of forget activations at layer 0, to two significant digits."""
    natural = analysis.forget_norm_by_layer(org.model, org.hazardous_prompts, layers=[0])
    per_coordinate = float(natural["forget_norm"].iloc[0]) / models.d_model(org.model) ** 0.5
    return [float(f"{f * per_coordinate:.2g}") for f in factors]


def _spread(values: Sequence[float], k: int) -> list[float]:
    """``k`` values spread over ``values`` (first and last included)."""
    if len(values) <= k:
        return list(values)
    step = (len(values) - 1) / (k - 1)
    return [values[round(i * step)] for i in range(k)]


__all__ = [
    "FIGURES",
    "GALLERY",
    "GallerySettings",
    "adaptive_set",
    "adaptive_tables",
    "default_work_dir",
    "demo_set",
    "make_figures",
    "save_all",
]
