"""stats.py: bootstrap intervals over items and seeds, checked on cases computable by hand:
certain outcomes give zero-width intervals, a fair coin gives the binomial width, resampling is
paired across variants, seeds are resampled as a level of their own, and an undefined gap is
counted rather than hidden."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from unlearn_interp import evaluation, stats
from unlearn_interp.errors import UnlearnInterpError


def rows(variant: str, correct, task: str = "bio", seed=np.nan) -> pd.DataFrame:
    correct = list(correct)
    return pd.DataFrame(
        {
            "variant": variant,
            "task": task,
            "seed": seed,
            "item": range(len(correct)),
            "correct": correct,
        }
    )


def table(*frames: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)


def by_variant(frame: pd.DataFrame, **where) -> pd.Series:
    mask = np.ones(len(frame), dtype=bool)
    for column, value in where.items():
        mask &= frame[column] == value
    (index,) = np.flatnonzero(mask)
    return frame.iloc[index]


# A base that knows everything, an RMU model that lost half of it.
N = 200
BASE = [1] * N
RMU = [1] * (N // 2) + [0] * (N // 2)


# --- accuracy -----------------------------------------------------------------------------------


def test_certain_outcomes_give_zero_width_intervals():
    acc = stats.accuracy_intervals(table(rows("base", BASE), rows("none", [0] * N)), n_boot=500)
    base, none = by_variant(acc, variant="base"), by_variant(acc, variant="none")
    assert (base.accuracy, base.ci_low, base.ci_high) == (1.0, 1.0, 1.0)
    assert (none.accuracy, none.ci_low, none.ci_high) == (0.0, 0.0, 0.0)
    assert (base.n_items, base.n_seeds) == (N, 1)
    assert list(acc.columns) == [
        "variant", "task", "accuracy", "ci_low", "ci_high", "n_items", "n_seeds",
    ]  # fmt: skip


def test_a_fair_coin_on_200_items_gives_the_binomial_width():
    """95% of a Binomial(200, 0.5) proportion: 2 * 1.96 * sqrt(0.25 / 200) = 0.139."""
    acc = stats.accuracy_intervals(rows("rmu", RMU), n_boot=4000, seed=1)
    row = by_variant(acc, variant="rmu")
    assert row.accuracy == 0.5
    assert row.ci_high - row.ci_low == pytest.approx(0.139, abs=0.02)
    assert row.ci_low < 0.5 < row.ci_high
    assert (0.5 - row.ci_low) == pytest.approx(row.ci_high - 0.5, abs=0.01)  # symmetric


def test_same_seed_same_intervals_other_seed_other_draws():
    data = table(rows("base", BASE), rows("rmu", RMU))
    first = stats.accuracy_intervals(data, n_boot=300, seed=7)
    pd.testing.assert_frame_equal(first, stats.accuracy_intervals(data, n_boot=300, seed=7))
    other = stats.accuracy_intervals(data, n_boot=300, seed=8)
    assert not np.allclose(first.ci_low, other.ci_low) or not np.allclose(
        first.ci_high, other.ci_high
    )


def test_seeds_are_resampled_as_a_level_of_their_own():
    """Seed 0 answers everything, seed 1 nothing: a replicate draws (0, 0) with p = 1/4, mixed
    with p = 1/2 and (1, 1) with p = 1/4, so the 95% interval is exactly [0, 1]."""
    data = table(rows("rmu", [1] * 50, seed=0), rows("rmu", [0] * 50, seed=1))
    row = by_variant(stats.accuracy_intervals(data, n_boot=2000), variant="rmu")
    assert (row.accuracy, row.ci_low, row.ci_high, row.n_seeds) == (0.5, 0.0, 1.0, 2)


def test_a_seed_independent_variant_is_the_same_as_repeating_it_for_every_seed():
    rng = np.random.default_rng(0)
    base = (rng.random(80) < 0.9).astype(int)
    per_seed = [rows("rmu", (rng.random(80) < 0.3).astype(int), seed=s) for s in (0, 1, 2)]
    once = table(rows("base", base), *per_seed)
    repeated = table(*(rows("base", base, seed=s) for s in (0, 1, 2)), *per_seed)
    a = stats.accuracy_intervals(once, n_boot=500)
    b = stats.accuracy_intervals(repeated, n_boot=500)
    assert by_variant(a, variant="base").n_seeds == 1 and by_variant(b, variant="base").n_seeds == 3
    pd.testing.assert_frame_equal(a.drop(columns="n_seeds"), b.drop(columns="n_seeds"))
    ga = stats.gap_recovered_intervals(once, variants=["rmu"], n_boot=500)
    gb = stats.gap_recovered_intervals(repeated, variants=["rmu"], n_boot=500)
    pd.testing.assert_frame_equal(ga, gb)


def test_every_interval_contains_its_point_estimate():
    rng = np.random.default_rng(3)
    frames = [
        rows(v, (rng.random(60) < p).astype(int), task=t, seed=s)
        for v, p in (("base", 0.8), ("rmu", 0.3), ("abl", 0.6))
        for t in ("bio", "cyber")
        for s in (0, 1)
    ]
    acc = stats.accuracy_intervals(table(*frames), n_boot=500)
    assert len(acc) == 6 and ((acc.ci_low <= acc.accuracy) & (acc.accuracy <= acc.ci_high)).all()
    gaps = stats.gap_recovered_intervals(table(*frames), variants=["abl"], n_boot=500)
    assert list(gaps.task) == ["bio", "cyber", "mean"]
    assert ((gaps.ci_low <= gaps.gap_recovered) & (gaps.gap_recovered <= gaps.ci_high)).all()


# --- gap recovered ------------------------------------------------------------------------------


def test_the_gap_formula_is_evaluations():
    for b, u, i in ((0.637, 0.312, 0.543), (0.44, 0.282, 0.35), (0.5, 0.5, 0.7), (0.3, 0.6, 0.5)):
        expected = evaluation.gap_recovered(b, u, i)
        got = float(stats.gap_ratio(i, u, b))
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_paired_resampling_gives_identical_variants_exact_gaps_with_zero_width():
    data = table(rows("base", BASE), rows("rmu", RMU), rows("same", RMU), rows("as_base", BASE))
    gaps = stats.gap_recovered_intervals(data, n_boot=1000)
    same = by_variant(gaps, variant="same", task="bio")
    assert (same.gap_recovered, same.ci_low, same.ci_high, same.n_excluded) == (0.0, 0.0, 0.0, 0)
    top = by_variant(gaps, variant="as_base", task="bio")
    assert (top.gap_recovered, top.ci_low, top.ci_high) == (1.0, 1.0, 1.0)
    # Unpaired, the same two accuracies would each wobble by ~0.035 on their own.
    acc = stats.accuracy_intervals(data, n_boot=1000)
    assert by_variant(acc, variant="same").ci_high - by_variant(acc, variant="same").ci_low > 0.1


def test_paired_intervals_are_much_narrower_than_unpaired_ones():
    """RMU lost items 100-199; the variant brings back 10 of them: gap 0.1. Paired, only which
    of the lost items are drawn matters (sd ~0.03); drawing each variant's items independently
    adds the noise of both accuracies (sd ~0.14)."""
    fixed = RMU.copy()
    fixed[100:110] = [1] * 10
    data = table(rows("base", BASE), rows("rmu", RMU), rows("fixed", fixed))
    row = by_variant(stats.gap_recovered_intervals(data, n_boot=2000), variant="fixed", task="bio")
    assert row.gap_recovered == pytest.approx(0.1)
    rng = np.random.default_rng(0)

    def unpaired(correct):
        draws = rng.integers(0, N, size=(2000, N))
        return np.asarray(correct, dtype=float)[draws].mean(axis=1)

    ratio = stats.gap_ratio(unpaired(fixed), unpaired(RMU), unpaired(BASE))
    unpaired_width = np.subtract(*np.nanpercentile(ratio, [97.5, 2.5]))
    assert row.ci_high - row.ci_low < 0.5 * unpaired_width
    assert row.ci_high - row.ci_low == pytest.approx(4 * math.sqrt(0.1 * 0.9 / 100), rel=0.25)


def test_the_mean_row_averages_the_per_task_gaps():
    bio = [rows("base", BASE), rows("rmu", RMU), rows("abl", RMU[:150] + [1] * 50)]  # gap 0.5
    cyber = [rows("base", BASE, "cyber"), rows("rmu", [0] * N, "cyber"),
             rows("abl", [1] * 50 + [0] * 150, "cyber")]  # fmt: skip  # gap 0.25
    gaps = stats.gap_recovered_intervals(table(*bio, *cyber), n_boot=500)
    assert list(gaps.task) == ["bio", "cyber", "mean"] and set(gaps.against) == {"base"}
    assert list(gaps.gap_recovered) == pytest.approx([0.5, 0.25, 0.375])
    assert (gaps.n_boot == 500).all()
    only_bio = stats.gap_recovered_intervals(table(*bio, *cyber), forget_tasks=["bio"], n_boot=50)
    assert list(only_bio.task) == ["bio", "mean"]
    assert only_bio.gap_recovered.iloc[0] == only_bio.gap_recovered.iloc[1] == 0.5


def test_recovery_against_the_base_model_under_the_same_ablation():
    """The ablation also costs the base model 40 items: measured against that base, the
    ablated RMU model recovers (150 - 100) / (160 - 100) of the gap instead of 50 / 100."""
    base_abl = [1] * 160 + [0] * 40
    rmu_abl = [1] * 150 + [0] * 50
    data = table(rows("base", BASE), rows("rmu", RMU), rows("base_abl", base_abl),
                 rows("rmu_abl", rmu_abl))  # fmt: skip
    gaps = stats.gap_recovered_intervals(data, reference={"rmu_abl": "base_abl"}, n_boot=500)
    assert list(zip(gaps.variant, gaps.against, gaps.task, strict=True)) == [
        ("rmu_abl", "base", "bio"), ("rmu_abl", "base", "mean"),
        ("rmu_abl", "base_abl", "bio"), ("rmu_abl", "base_abl", "mean"),
    ]  # fmt: skip  # base_abl is a counterpart, so not measured itself by default
    assert list(gaps.gap_recovered) == pytest.approx([0.5, 0.5, 50 / 60, 50 / 60])


def test_replicates_without_a_gap_are_excluded_and_counted():
    """Base beats RMU on 2 of 20 items only; a replicate misses both with p = 0.9^20 = 0.122,
    has no gap there, and is left out (about 243 of 2000)."""
    base = [1] * 20
    rmu_ = [0, 0] + [1] * 18
    data = table(rows("base", base), rows("rmu", rmu_), rows("abl", [1, 0] + [1] * 18))
    row = by_variant(stats.gap_recovered_intervals(data, n_boot=2000), variant="abl", task="bio")
    assert row.gap_recovered == pytest.approx(0.5)
    assert row.n_excluded == pytest.approx(2000 * 0.9**20, abs=60)
    assert (row.ci_low, row.ci_high) == (0.0, 1.0)  # only item 0, only item 1, or both drawn
    no_gap = table(rows("base", rmu_), rows("rmu", rmu_), rows("abl", base))
    row = by_variant(stats.gap_recovered_intervals(no_gap, n_boot=100), variant="abl", task="bio")
    assert math.isnan(row.gap_recovered) and math.isnan(row.ci_low) and row.n_excluded == 100


def test_per_item_table_collects_mcq_per_item_tables():
    frame = pd.DataFrame({"item": [0, 1, 2], "correct": [True, False, True], "answer": [0, 1, 2]})
    tidy = stats.per_item_table({("base", "bio", None): frame, ("rmu", "bio", 0): frame})
    assert list(tidy.columns) == list(stats.COLUMNS) and len(tidy) == 6
    assert tidy.correct.tolist() == [1, 0, 1, 1, 0, 1] and tidy.seed.isna().sum() == 3
    acc = stats.accuracy_intervals(tidy, n_boot=50)
    assert by_variant(acc, variant="rmu").accuracy == pytest.approx(2 / 3)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (rows("a", [1, 0]).drop(columns="seed"), "lacks column.s. seed"),
        (rows("a", [1, 2]), r"row 1: correct is 2, not 0 or 1"),
        (rows("a", [1, None]), r"row 1: correct is nan, not 0 or 1"),
        (table(rows("a", [1, 0]), rows("a", [1])), "variant 'a', task 'bio', seed nan, item 0 "),
        (table(rows("a", [1], seed=0), rows("a", [1, 0], seed=1)), "seed 0 lacks item 1"),
        (table(rows("a", [1, 0], seed=0), rows("b", [1, 0], seed=1)), "'a' .* no rows for seed 1"),
        (table(rows("a", [1, 0], seed=0), rows("a", [1, 0], task="x")), None),
        (rows("a", [1], task="mean"), "may not be called 'mean'"),
        (rows("a", [])[:0], "has no rows"),
    ],
)
def test_bad_tables_are_one_sentence(data, message):
    if message is None:  # a variant seeded on one task and seed-independent on another is fine
        assert len(stats.accuracy_intervals(data, n_boot=10)) == 2
        return
    with pytest.raises(UnlearnInterpError, match=message):
        stats.accuracy_intervals(data, n_boot=10)


def test_mixed_seeds_unknown_names_and_bad_settings_are_named():
    mixed = pd.DataFrame({"variant": "a", "task": "bio", "seed": [0, np.nan], "item": [0, 1],
                          "correct": [1, 0]})  # fmt: skip
    with pytest.raises(UnlearnInterpError, match="rows with and without a seed"):
        stats.accuracy_intervals(mixed)
    data = table(rows("base", BASE), rows("rmu", RMU))
    with pytest.raises(UnlearnInterpError, match="no variant 'rmu2'"):
        stats.gap_recovered_intervals(data, unlearned="rmu2")
    with pytest.raises(UnlearnInterpError, match="forget task 'cyber' is not in"):
        stats.gap_recovered_intervals(data, variants=["rmu"], forget_tasks=["cyber"])
    with pytest.raises(UnlearnInterpError, match="variant 'nope' has no rows for task 'bio'"):
        stats.gap_recovered_intervals(data, variants=["nope"])
    with pytest.raises(UnlearnInterpError, match="no variant to measure"):
        stats.gap_recovered_intervals(data)
    with pytest.raises(UnlearnInterpError, match="n_boot 0"):
        stats.accuracy_intervals(data, n_boot=0)
    with pytest.raises(UnlearnInterpError, match="confidence 1.5"):
        stats.accuracy_intervals(data, confidence=1.5)
