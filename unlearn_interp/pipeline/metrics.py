"""metrics.json: the headline numbers of a run, computed from its tables and artifacts.

:func:`demo_metrics` gives DESIGN.md's schema for one unlearned model (accuracy per variant and
task, gap recovered by the junk direction and its random control, the junk direction, the layer
profile's numbers, seconds); :func:`study_metrics` gives the same keys for the multi-seed study,
means over seeds with a 95% interval beside each (``*_ci``).

    >>> demo_metrics(RunDir("runs/demo"), forget_tasks=("hazardous",), layer=2)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from unlearn_interp import artifacts, directions, evaluation, models, stats
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.rundir import STEP_TIMES, RunDir
from unlearn_interp.pipeline.study_config import Arm, Study

# gap recovered of the demo: name -> the variant measured between base and rmu
DEMO_GAPS = (("junk", "rmu_ablated"), ("random", "rmu_random_ablated"))
ANALYSIS_STEPS = ("direction", "accuracy", "layer_profile", "generations", "figures")


def demo_metrics(run: RunDir, forget_tasks: Sequence[str], layer: int) -> dict[str, Any]:
    """metrics.json (DESIGN.md schema): accuracies, gap recovered, junk direction, timings."""
    acc = run.table("accuracy")
    accuracy = {
        variant: {row.task: float(row.accuracy) for row in group.itertuples()}
        for variant, group in acc.groupby("variant", sort=False)
    }
    gaps = {
        name: {task: _gap(accuracy, variant, task) for task in forget_tasks}
        for name, variant in DEMO_GAPS
    }
    junk = directions.Direction.load(run.path(RunFiles.DIRECTION))
    cos_u = junk.metadata.get("cos_with_control_vectors") or [float("nan")]
    return {
        "accuracy": accuracy,
        "gap_recovered": {k: _mean_or_only(v) for k, v in gaps.items()},
        "gap_recovered_per_task": gaps,
        "junk_direction": {
            "layer": junk.layer,
            "cos_with_control_vector": max(cos_u, key=abs),
            "raw_norm": junk.raw_norm,
        },
        "layer_profile": profile_summary(run.table("layer_profile"), layer),
        "seconds": _seconds_summary(run.seconds()),
    }


def _gap(accuracy: Mapping[str, Mapping[str, float]], variant: str, task: str) -> float:
    return evaluation.gap_recovered(
        accuracy["base"][task], accuracy["rmu"][task], accuracy[variant][task]
    )


def _mean_or_only(per_task: Mapping[str, float]) -> float:
    values = list(per_task.values())
    return values[0] if len(values) == 1 else float(sum(values) / len(values))


def profile_summary(profile: pd.DataFrame, layer: int) -> dict[str, float]:
    """The numbers the blog's plots show: norm ratio at the RMU layer, cosines after ablation."""
    forget = profile[profile["prompt_set"] == "forget"].set_index(["variant", "layer"])
    norm = forget["norm"]
    cos = forget["cos_to_reference"]
    return {
        "norm_ratio_rmu_vs_base_at_layer": float(norm[("rmu", layer)] / norm[("base", layer)]),
        "norm_ratio_ablated_vs_base_at_layer": float(
            norm[("rmu_ablated", layer)] / norm[("base", layer)]
        ),
        "min_cos_rmu_to_base": float(cos.loc["rmu"].min()),
        "min_cos_ablated_to_base": float(cos.loc["rmu_ablated"].min()),
    }


def _seconds_summary(seconds: Mapping[str, float]) -> dict[str, float]:
    pretrain = seconds.get("organism", 0.0)
    unlearn = seconds.get("unlearn", 0.0)
    other = sum(seconds.get(s, 0.0) for s in ANALYSIS_STEPS)
    return {"pretrain": pretrain, "rmu": unlearn, "analysis": round(other, 3),
            "total": round(pretrain + unlearn + other, 3)}  # fmt: skip


def study_metrics(run: RunDir, study: Study, tables: Mapping[str, pd.DataFrame]) -> dict:
    """metrics.json: the organism's schema (``accuracy``, ``gap_recovered``, ``junk_direction``,
    ``seconds``) plus ``forget_tasks`` and, beside each figure, its interval (``*_ci`` keys with
    ``ci_low`` / ``ci_high``)."""
    accuracy, gaps = tables["accuracy"], tables["gap_recovered"]
    means = gaps[gaps["task"] == stats.MEAN_TASK]
    headline = means[means["arm"] == study.headline.name].set_index("gap")
    return {
        "model": models.model_name(study.model),
        "forget_tasks": list(study.data.forget_tasks),
        "gap_tasks": list(study.gap_tasks),
        "retain_tasks": [t for t in study.tasks if t not in study.data.forget_tasks],
        "seeds": list(study.headline.seeds),
        "accuracy": _nested(accuracy, "accuracy"),
        "accuracy_ci": _nested(accuracy, ["ci_low", "ci_high", "n_items", "n_seeds"]),
        "gap_recovered": {name: float(row.gap_recovered) for name, row in headline.iterrows()},
        "gap_recovered_ci": {name: _interval(row) for name, row in headline.iterrows()},
        "gap_recovered_per_task": _per_task_gaps(gaps, study.headline),
        "arms": _arm_summaries(means, study),
        "junk_direction": _direction_summary(run, study.headline),
        "seconds": _study_seconds(run),
    }


def _interval(row: Any) -> dict[str, float]:
    return {"ci_low": float(row.ci_low), "ci_high": float(row.ci_high)}


def _value_and_interval(row: Any) -> dict[str, float]:
    return {"value": float(row.gap_recovered), **_interval(row)}


def _nested(table: pd.DataFrame, columns: str | list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in table.itertuples(index=False):
        value = (
            float(getattr(row, columns)) if isinstance(columns, str)
            else {c: _number(getattr(row, c)) for c in columns}
        )  # fmt: skip
        out.setdefault(row.variant, {})[row.task] = value
    return out


def _number(value: Any) -> float | int:
    return int(value) if float(value).is_integer() and abs(value) > 1 else float(value)


def _per_task_gaps(gaps: pd.DataFrame, arm: Arm) -> dict[str, dict[str, dict[str, float]]]:
    rows = gaps[(gaps["arm"] == arm.name) & (gaps["task"] != stats.MEAN_TASK)]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows.itertuples():
        out.setdefault(r.gap, {})[r.task] = _value_and_interval(r)
    return out


def _arm_summaries(gaps: pd.DataFrame, study: Study) -> dict[str, Any]:
    return {
        arm.name: {
            "rmu": arm.config.to_dict(),
            "seeds": list(arm.seeds),
            "gap_recovered": {
                r.gap: _value_and_interval(r) for r in gaps[gaps["arm"] == arm.name].itertuples()
            },
        }
        for arm in study.arms
    }


def _direction_summary(run: RunDir, arm: Arm) -> dict[str, Any]:
    """Junk direction layer, |cos| with the control vector per seed and its mean; the subspace's
    layers and dimension."""
    cosines, dims = [], []
    for seed in arm.seeds:
        sub = run.path(arm.seed_dir(seed))
        junk = directions.Direction.load(sub / RunFiles.DIRECTION)
        cosines.append(
            max(map(abs, junk.metadata.get("cos_with_control_vectors") or [float("nan")]))
        )
        dims.append(directions.Subspace.load(sub / RunFiles.SUBSPACE).k)
    return {
        "layer": arm.config.layer,
        "cos_with_control_vector": float(sum(cosines) / len(cosines)),
        "cos_with_control_vector_per_seed": cosines,
        "subspace_layers": list(arm.config.update_layers),
        "subspace_dims_per_seed": dims,
    }


def _study_seconds(run: RunDir) -> dict[str, Any]:
    """Wall seconds: fetch, data, RMU (all seeds and arms), analysis (everything else), total,
    and every step by name (``seeds_<step>`` summed over the sub-runs)."""
    top = run.seconds()
    seeds: dict[str, float] = {}
    for path in sorted(run.root.glob("seeds/*/" + STEP_TIMES)):
        for step, value in artifacts.read_json(path).items():
            seeds[step] = seeds.get(step, 0.0) + value
    rmu_seconds = seeds.get("unlearn", 0.0)
    analysis_seconds = sum(seeds.values()) - rmu_seconds
    analysis_seconds += sum(v for k, v in top.items() if k not in ("fetch", "data"))
    summary = {"fetch": top.get("fetch", 0.0), "data": top.get("data", 0.0), "rmu": rmu_seconds,
               "analysis": analysis_seconds}  # fmt: skip
    summary = {k: round(v, 3) for k, v in summary.items()}
    steps = {**top, **{f"seeds_{k}": round(v, 3) for k, v in seeds.items()}}
    return {**summary, "total": round(sum(summary.values()), 3), "steps": steps}
