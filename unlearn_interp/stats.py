"""Bootstrap intervals for accuracies and gap recovered, over items and over seeds.

Every recovery number needs an error bar: a few hundred questions and a handful of RMU seeds
leave several points of noise. The input is one tidy table with a row per answered question::

    variant   task       seed  item  correct
    base      wmdp_bio   NaN   0     1        # seed NaN: the variant does not depend on the seed
    rmu       wmdp_bio   0     0     0
    rmu_abl   wmdp_bio   0     0     1
    ...

    acc = accuracy_intervals(per_item)            # variant, task, accuracy, ci_low, ci_high, ...
    gaps = gap_recovered_intervals(per_item, variants=["rmu_abl", "rmu_rand"],
                                   reference={"rmu_abl": "base_abl"})

The bootstrap has two levels: each replicate draws the seeds with replacement, then, for each
task, the items with replacement, and every variant is scored on that same draw (same seeds,
same items), so differences and ratios between variants are paired: a variant identical to
``rmu`` has a gap of exactly 0 in every replicate. Percentile intervals; float64 throughout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from unlearn_interp.checks import is_int
from unlearn_interp.errors import UnlearnInterpError

log = logging.getLogger(__name__)

COLUMNS = ("variant", "task", "seed", "item", "correct")
MEAN_TASK = "mean"  # the task name of the row averaging the per-task gaps
# Accuracies this close count as equal, so there is no gap to recover (evaluation.gap_recovered).
NO_GAP_ATOL = 1e-12


def gap_ratio(intervened: Any, unlearned: Any, base: Any) -> np.ndarray:
    """Gap recovered, ``(intervened - unlearned) / (base - unlearned)``, elementwise in float64;
    NaN where ``base`` and ``unlearned`` are equal (to 1e-12), because there is no gap.

    The one definition of the rule: ``evaluation.gap_recovered`` calls it for single numbers,
    the bootstrap here for arrays of replicates.

    >>> gap_ratio([0.543, 0.4], 0.312, [0.637, 0.312]).round(2)
    array([0.71,  nan])
    """
    i, u, b = (np.asarray(x, dtype=np.float64) for x in (intervened, unlearned, base))
    gap = b - u
    undefined = no_gap(u, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(undefined, np.nan, (i - u) / np.where(undefined, 1.0, gap))


def no_gap(unlearned: Any, base: Any) -> np.ndarray:
    """True where ``base`` and ``unlearned`` accuracy are equal (to 1e-12): no gap to recover.

    >>> no_gap([0.3, 0.5], 0.5)
    array([False,  True])
    """
    u, b = (np.asarray(x, dtype=np.float64) for x in (unlearned, base))
    return np.asarray(np.abs(b - u) <= NO_GAP_ATOL)


def per_item_table(results: Mapping[tuple[str, str, Any], pd.DataFrame]) -> pd.DataFrame:
    """The tidy input of this module from per-item tables (``MCQResult.per_item``: columns
    ``item`` and ``correct``), keyed by ``(variant, task, seed)``; seed ``None`` for a variant
    that does not depend on the seed.

    >>> per_item_table({("base", "bio", None): pd.DataFrame({"item": [0, 1], "correct": [1, 0]})})
      variant task  seed  item  correct
    0    base  bio   NaN     0        1
    1    base  bio   NaN     1        0
    """
    frames = []
    for (variant, task, seed), frame in results.items():
        missing = [c for c in ("item", "correct") if c not in frame.columns]
        if missing:
            raise UnlearnInterpError(
                f"the per-item table of {variant!r} on {task!r} lacks column(s) {missing}"
            )
        frames.append(
            pd.DataFrame(
                {
                    "variant": variant,
                    "task": task,
                    "seed": np.nan if seed is None else seed,
                    "item": frame["item"].to_numpy(),
                    "correct": frame["correct"].astype(int).to_numpy(),
                }
            )
        )
    if not frames:
        raise UnlearnInterpError("no per-item tables were given")
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# The table as arrays, checked
# ---------------------------------------------------------------------------------------------


class _Scores:
    """Per task, ``correct`` as a float64 array ``[variant, seed, item]``; a seed-independent
    variant's one evaluation is repeated for every seed, so all variants share one layout."""

    def __init__(self, per_item: pd.DataFrame) -> None:
        table = _checked(per_item)
        known = table["seed"].dropna()
        self.seeds = sorted(known.unique().tolist()) or [None]
        self.variants = list(dict.fromkeys(table["variant"]))
        self.tasks = list(dict.fromkeys(table["task"]))
        self.arrays: dict[str, np.ndarray] = {}
        self.present: dict[str, list[str]] = {}  # task -> variants scored on it, in order
        self.n_items: dict[str, int] = {}
        self.n_seeds: dict[tuple[str, str], int] = {}
        for task, rows in table.groupby("task", sort=False):
            self._add_task(str(task), rows)

    def _add_task(self, task: str, rows: pd.DataFrame) -> None:
        items = list(dict.fromkeys(rows["item"]))
        variants = list(dict.fromkeys(rows["variant"]))
        array = np.empty((len(variants), len(self.seeds), len(items)))
        for v, (variant, group) in enumerate(rows.groupby("variant", sort=False)):
            seedless = group["seed"].isna()
            if seedless.any() and not seedless.all():
                raise UnlearnInterpError(
                    f"variant {variant!r} on task {task!r} has rows with and without a seed; "
                    "give every row a seed, or none if the variant does not depend on it"
                )
            by_seed = [(None, group)] if seedless.all() else list(group.groupby("seed"))
            if not seedless.all():
                missing = sorted(set(self.seeds) - {s for s, _ in by_seed})
                if missing:
                    raise UnlearnInterpError(
                        f"variant {variant!r} on task {task!r} has no rows for seed "
                        f"{missing[0]}; give a variant that does not depend on the seed an "
                        "empty (NaN) seed"
                    )
            self.n_seeds[(str(variant), task)] = len(by_seed)
            for seed, chunk in by_seed:
                _check_items(chunk, items, variant, task, seed)
                values = chunk.set_index("item")["correct"].reindex(items).to_numpy(np.float64)
                where = slice(None) if seed is None else self.seeds.index(seed)
                array[v, where] = values
        self.arrays[task] = array
        self.present[task] = [str(v) for v in variants]
        self.n_items[task] = len(items)

    def point(self, task: str) -> np.ndarray:
        """Accuracy of each variant on ``task``: the mean over seeds of per-seed accuracy."""
        return self.arrays[task].mean(axis=(1, 2))

    def replicates(self, n_boot: int, seed: int) -> dict[str, np.ndarray]:
        """``{task: accuracies [n_boot, variant]}``, every task and variant on the same draws."""
        rng = np.random.default_rng(seed)
        n_seeds = len(self.seeds)
        # How often each seed / item is drawn. Sums of counts times 0/1 are exact integers, so
        # dividing last keeps certain outcomes exact (all correct: 1.0, not 1.0000000000000002).
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot)
        out = {}
        for task in self.tasks:
            array = self.arrays[task]  # [variant, seed, item]
            n_items = array.shape[2]
            item_counts = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=n_boot)
            per_seed = (item_counts @ array.reshape(-1, n_items).T) / n_items  # [boot, v * s]
            per_seed = per_seed.reshape(n_boot, array.shape[0], n_seeds)
            out[task] = np.einsum("bvs,bs->bv", per_seed, seed_counts) / n_seeds
        return out

    def index(self, task: str, variant: str) -> int:
        if variant not in self.present.get(task, []):
            raise UnlearnInterpError(f"variant {variant!r} has no rows for task {task!r}")
        return self.present[task].index(variant)


def _checked(per_item: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(per_item, pd.DataFrame):
        raise UnlearnInterpError(f"per_item must be a DataFrame, got {type(per_item).__name__}")
    missing = [c for c in COLUMNS if c not in per_item.columns]
    if missing:
        raise UnlearnInterpError(
            f"the per-item table lacks column(s) {', '.join(missing)} (needs {', '.join(COLUMNS)})"
        )
    if per_item.empty:
        raise UnlearnInterpError("the per-item table has no rows")
    table = per_item[list(COLUMNS)].copy()
    correct = pd.to_numeric(table["correct"], errors="coerce")
    bad = ~correct.isin([0, 1])
    if bad.any():
        row = bad.to_numpy().argmax()
        raise UnlearnInterpError(
            f"per-item row {row}: correct is {table['correct'].iloc[row]}, not 0 or 1"
        )
    table["correct"] = correct.astype(np.float64)
    for column in ("variant", "task", "item"):
        if table[column].isna().any():
            raise UnlearnInterpError(f"per-item column {column} has empty values")
    if (table["task"] == MEAN_TASK).any():
        raise UnlearnInterpError(f"a task may not be called {MEAN_TASK!r}: that row is the mean")
    keys = table[["variant", "task", "seed", "item"]]
    duplicated = keys.duplicated()
    if duplicated.any():
        v, t, s, i = keys[duplicated].iloc[0]
        raise UnlearnInterpError(f"variant {v!r}, task {t!r}, seed {s}, item {i} appears twice")
    return table


def _check_items(chunk: pd.DataFrame, items: list, variant: Any, task: str, seed: Any) -> None:
    """Paired resampling needs every variant and seed scored on the task's whole item set."""
    if len(chunk) != len(items):
        have = set(chunk["item"])
        absent = next(i for i in items if i not in have)
        where = "" if seed is None else f", seed {seed}"
        raise UnlearnInterpError(
            f"variant {variant!r} on task {task!r}{where} lacks item {absent!r} "
            f"({len(chunk)} of the task's {len(items)} items); every variant and seed must "
            "answer the same items"
        )


def _check_boot(n_boot: int, confidence: float) -> None:
    if not is_int(n_boot) or n_boot < 1:
        raise UnlearnInterpError(f"n_boot {n_boot!r} must be a positive integer")
    if not 0 < confidence < 1:
        raise UnlearnInterpError(f"confidence {confidence!r} must be between 0 and 1")


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float, float, int]:
    """Percentile interval over the finite replicates, and how many were not finite."""
    finite = replicates[np.isfinite(replicates)]
    excluded = int(replicates.size - finite.size)
    if finite.size == 0:
        return math.nan, math.nan, excluded
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high), excluded


# ---------------------------------------------------------------------------------------------
# The two tables
# ---------------------------------------------------------------------------------------------


def accuracy_intervals(
    per_item: pd.DataFrame, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """Accuracy of every variant on every task with a two-level bootstrap interval.

    ``accuracy`` is the mean over seeds of each seed's accuracy (a seed-independent variant:
    its one evaluation). Columns: ``variant, task, accuracy, ci_low, ci_high, n_items,
    n_seeds`` (``n_seeds`` is 1 for a seed-independent variant). ``seed`` seeds the resampling:
    the same seed gives the same intervals.

    >>> acc = accuracy_intervals(per_item)                       # doctest: +SKIP
    >>> acc.query("variant == 'rmu_abl'")[["task", "accuracy", "ci_low", "ci_high"]]  # doctest: +SKIP
    """
    _check_boot(n_boot, confidence)
    scores = _Scores(per_item)
    replicates = scores.replicates(n_boot, seed)
    rows = []
    for task in scores.tasks:
        point = scores.point(task)
        for v, variant in enumerate(scores.present[task]):
            low, high, _ = _interval(replicates[task][:, v], confidence)
            rows.append(
                {
                    "variant": variant,
                    "task": task,
                    "accuracy": float(point[v]),
                    "ci_low": low,
                    "ci_high": high,
                    "n_items": scores.n_items[task],
                    "n_seeds": scores.n_seeds[(variant, task)],
                }
            )
    order = {v: i for i, v in enumerate(scores.variants)}
    table = pd.DataFrame(rows)
    return table.sort_values("variant", key=lambda c: c.map(order), kind="stable").reset_index(
        drop=True
    )


def gap_recovered_intervals(
    per_item: pd.DataFrame,
    base: str = "base",
    unlearned: str = "rmu",
    variants: Sequence[str] | None = None,
    reference: Mapping[str, str] | None = None,
    forget_tasks: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Gap recovered by each variant, per forget task and averaged over them, with a paired
    two-level bootstrap interval.

    Against ``base`` (``against == base``): ``(v - rmu) / (base - rmu)``. ``reference`` maps a
    variant to its base counterpart with the same intervention, ``{"rmu_abl": "base_abl"}``,
    adding rows ``(rmu_abl - rmu) / (base_abl - rmu)`` (``against == "base_abl"``): recovery
    measured against what the base model itself keeps under that ablation. ``variants``
    defaults to every variant other than ``base``, ``unlearned`` and the counterparts;
    ``forget_tasks`` to every task on which ``base`` and ``unlearned`` both have rows.

    The ``task == "mean"`` row is the mean of the per-task gaps (as ``metrics.json``'s headline
    number is), computed inside each replicate.

    Undefined ratios: where the reference and ``rmu`` accuracies are equal (to 1e-12) in a
    replicate there is no gap, the ratio is NaN (as in ``evaluation.gap_recovered``) and that
    replicate is left out of the interval (for the mean row: when any task's ratio is NaN).
    ``n_excluded`` says how many of the ``n_boot`` replicates were left out; a large count
    means the gap itself is within the noise. The point estimate is NaN when the full data have
    no gap.

    Columns: ``variant, against, task, gap_recovered, ci_low, ci_high, n_boot, n_excluded``.

    >>> gap_recovered_intervals(per_item, variants=["rmu_abl"], reference={"rmu_abl": "base_abl"})  # doctest: +SKIP
    """
    _check_boot(n_boot, confidence)
    scores = _Scores(per_item)
    reference = dict(reference or {})
    tasks = _forget_tasks(scores, base, unlearned, forget_tasks)
    if variants is None:
        skip = {base, unlearned, *reference.values()}
        variants = [v for v in scores.variants if v not in skip]
    pairs = [(v, base) for v in variants] + list(reference.items())
    if not pairs:
        raise UnlearnInterpError("no variant to measure: give variants or a reference mapping")
    replicates = scores.replicates(n_boot, seed)
    rows = []
    for variant, against in pairs:
        points, reps = _pair_gaps(scores, replicates, tasks, (variant, unlearned, against))
        rows += _gap_rows(variant, against, tasks, points, reps, n_boot, confidence)
    return pd.DataFrame(rows)


def _pair_gaps(
    scores: _Scores,
    replicates: Mapping[str, np.ndarray],
    tasks: Sequence[str],
    names: tuple[str, str, str],
) -> tuple[list[float], list[np.ndarray]]:
    """Per task, the gap ``names = (variant, unlearned, against)`` recovers: the point estimate
    and its bootstrap replicates ``[n_boot]``."""
    points, reps = [], []
    for task in tasks:
        i, u, r = (scores.index(task, name) for name in names)
        point = scores.point(task)
        points.append(float(gap_ratio(point[i], point[u], point[r])))
        rep = replicates[task]
        reps.append(gap_ratio(rep[:, i], rep[:, u], rep[:, r]))
    return points, reps


def _gap_rows(
    variant: str,
    against: str,
    tasks: Sequence[str],
    points: list[float],
    reps: list[np.ndarray],
    n_boot: int,
    confidence: float,
) -> list[dict[str, Any]]:
    """The table rows of one (variant, against) pair: each task, then their mean."""
    rows = []
    for task, point, rep in zip(
        [*tasks, MEAN_TASK], [*points, np.mean(points)], [*reps, np.mean(reps, axis=0)], strict=True
    ):
        low, high, excluded = _interval(rep, confidence)
        if excluded:
            log.info(
                "gap recovered of %s against %s on %s: %d of %d replicates had no gap",
                variant,
                against,
                task,
                excluded,
                n_boot,
            )
        rows.append(
            {
                "variant": variant,
                "against": against,
                "task": task,
                "gap_recovered": float(point),
                "ci_low": low,
                "ci_high": high,
                "n_boot": n_boot,
                "n_excluded": excluded,
            }
        )
    return rows


def _forget_tasks(
    scores: _Scores, base: str, unlearned: str, forget_tasks: Sequence[str] | None
) -> list[str]:
    for name in (base, unlearned):
        if name not in scores.variants:
            raise UnlearnInterpError(f"the per-item table has no variant {name!r}")
    if forget_tasks is None:
        return [t for t in scores.tasks if {base, unlearned} <= set(scores.present[t])]
    tasks = list(forget_tasks)
    unknown = [t for t in tasks if t not in scores.tasks]
    if unknown or not tasks:
        raise UnlearnInterpError(
            f"forget task {unknown[0]!r} is not in the per-item table (tasks: {scores.tasks})"
            if unknown
            else "forget_tasks is empty"
        )
    return tasks
