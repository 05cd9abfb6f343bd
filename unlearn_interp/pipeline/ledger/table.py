"""The recovery ledger's table: from every part's per-item rows to one row per evaluated model
and task (accuracy and gap recovered with paired bootstrap intervals), the headline rows read
against each attack's control, the report section, metrics.json's ``"ledger"`` entry and the
lines the command line prints.

Gap recovered is measured on one scale for every row, ``(acc - acc_unlearned) / (acc_base -
acc_unlearned)`` with the plain models' accuracies: 0 is where unlearning left the model, 1 is
the base model before unlearning.

    >>> table = ledger_table(per_item, ("forget_T", "forget_V"))            # doctest: +SKIP
    >>> ledger_metrics(table)["gap_recovered"]["relearn"]                  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from unlearn_interp import plotting, stats
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.pipeline.report import markdown_table
from unlearn_interp.pipeline.rundir import FIGURES

KEY = ("attack", "setting", "model", "step")  # one evaluated model; with ``task``, one row
COLUMNS = (
    *KEY,
    "role",
    "task",
    "accuracy",
    "n",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "gap_recovered",
    "ci_low",
    "ci_high",
)
REFERENCE = {"base": ("none", "plain", "base", 0), "unlearned": ("none", "plain", "unlearned", 0)}
FIGURE = "ledger"
FIGURE_FILE = f"{FIGURES}/{FIGURE}.html"
SECTION = "## Recovery ledger"
FINETUNE_ATTACKS = ("relearn", "benign_finetune")
# A control that was not run (benign fine-tuning skipped for want of text): NaN in every column.
MISSING = pd.Series(dtype=float)


# ---------------------------------------------------------------------------------------------
# From per-item rows to the ledger
# ---------------------------------------------------------------------------------------------


def ledger_table(
    per_item: pd.DataFrame, forget_tasks: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """One row per evaluated model and task: accuracy with its interval and, on the forget
    tasks, gap recovered with its paired interval (``stats``); columns :data:`COLUMNS`.

    ``per_item`` columns: :data:`KEY`, ``task``, ``item``, ``correct`` and optionally
    ``seed`` (a fine-tuning run's seed; empty for deterministic attacks: the interval of a
    seeded model resamples its seeds as well as the items); it must hold the plain models
    :data:`REFERENCE`, whose accuracies define the gap.
    """
    keys = per_item[list(KEY)].drop_duplicates().reset_index(drop=True)
    names = {tuple(row): f"m{i}" for i, row in enumerate(keys.itertuples(index=False))}
    keys["variant"] = list(names.values())
    if "seed" not in per_item.columns:
        per_item = per_item.assign(seed=np.nan)
    tidy = per_item.merge(keys, on=list(KEY))[["variant", "task", "item", "correct", "seed"]]
    accuracy = stats.accuracy_intervals(tidy, n_boot=n_boot, seed=seed)
    gaps = stats.gap_recovered_intervals(
        tidy,
        base=names[REFERENCE["base"]],
        unlearned=names[REFERENCE["unlearned"]],
        variants=list(names.values()),
        forget_tasks=list(forget_tasks),
        n_boot=n_boot,
        seed=seed,
    )
    return _assemble(keys, accuracy, gaps[gaps["task"] != stats.MEAN_TASK])


def _assemble(keys: pd.DataFrame, accuracy: pd.DataFrame, gaps: pd.DataFrame) -> pd.DataFrame:
    """The ledger's rows from the two interval tables, in the order the models were scored."""
    accuracy = accuracy.rename(
        columns={"ci_low": "accuracy_ci_low", "ci_high": "accuracy_ci_high", "n_items": "n"}
    )
    gaps = gaps[["variant", "task", "gap_recovered", "ci_low", "ci_high"]]
    table = keys.merge(accuracy, on="variant").merge(gaps, on=["variant", "task"], how="left")
    table["role"] = [role(*row) for row in table[["attack", "setting", "model"]].itertuples(False)]
    return table[list(COLUMNS)].reset_index(drop=True)


def role(attack: str, setting: str, model: str) -> str:
    """``reference`` (the plain models), ``control`` (the attack on a control model, or a random
    direction in place of the junk) or ``attack`` (the attack on the unlearned model)."""
    if attack == "none":
        return "reference"
    return "attack" if model == "unlearned" and not setting.startswith("random") else "control"


# ---------------------------------------------------------------------------------------------
# The report section
# ---------------------------------------------------------------------------------------------


def headline_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per attack and setting on the unlearned model at its last step, on the headline
    forget task (``plotting.headline_task``): gap recovered with its interval, the same for
    its control (:func:`control_key`) and the base model, and the unlearned model's retain
    accuracy under the attack."""
    task = plotting.headline_task(table)
    last = plotting.last_steps(table)
    forget = last[last["task"] == task].set_index(["attack", "setting", "model"])
    retain = last[last["task"] == "retain"].set_index(["attack", "setting", "model"])["accuracy"]
    rows, oracle = [], has_oracle(table)
    for key, row in forget[forget["role"] == "attack"].iterrows():
        attack, setting, _ = key
        control_at = control_key(attack, setting, oracle)
        control = forget.loc[control_at] if control_at in forget.index else MISSING
        base = forget.loc[(attack, setting, "base")]
        rows.append(
            {
                "attack": attack,
                "setting": setting,
                "step": int(row["step"]),
                "task": task,
                **_gap(row, ""),
                "control": control_label(attack, *control_at)
                if control is not MISSING
                else "none (not run)",
                **_gap(control, "control_"),
                **_gap(base, "base_"),
                "retain_accuracy": float(retain.get(key, float("nan"))),
            }
        )
    return pd.DataFrame(rows)


def control_key(attack: str, setting: str, oracle: bool = True) -> tuple[str, str, str]:
    """The control an attack on the unlearned model is read against, as ``(attack, setting,
    model)``: an ablation's random directions of matched dimension and norm on the same model;
    a fine-tuning run's oracle twin (what the attack teaches a model that never saw V) when
    there is one (``oracle``), else for relearning the unrelated-text control (benign
    fine-tuning of the unlearned model with the same schedule) and for benign fine-tuning the
    base model; a quantisation's base model (the same attack on a model that knew the facts)."""
    if attack == "ablation":
        return attack, f"random_{setting.removeprefix('junk_')}", "unlearned"
    if attack in FINETUNE_ATTACKS and oracle:
        return attack, setting, "oracle"
    if attack == "relearn":
        return "benign_finetune", setting, "unlearned"
    return attack, setting, "base"


def has_oracle(table: pd.DataFrame) -> bool:
    """Whether the ledger holds an oracle twin (the organism's; a real model has none)."""
    return bool((table["model"] == "oracle").any())


def control_label(attack: str, control_attack: str, setting: str, model: str) -> str:
    """``"oracle: lr=0.001,..."``: the control's model and setting, and its attack when it is
    not ``attack``'s own (``"unlearned: benign_finetune lr=0.001,..."``)."""
    other = f"{control_attack} " if control_attack != attack else ""
    return f"{model}: {other}{setting}"


def _gap(row: pd.Series, prefix: str) -> dict[str, float]:
    names = ("gap_recovered", "ci_low", "ci_high")
    return {f"{prefix}{name}": float(row.get(name, float("nan"))) for name in names}


def _cell(rows: pd.DataFrame, prefix: str) -> list[str]:
    """``0.62 [0.55, 0.69]``: gap recovered with its interval."""
    columns = [rows[f"{prefix}{c}"] for c in ("gap_recovered", "ci_low", "ci_high")]
    return [f"{g:.2f} [{lo:.2f}, {hi:.2f}]" for g, lo, hi in zip(*columns, strict=True)]


def ledger_markdown(table: pd.DataFrame, figure_png: bool = False) -> str:
    """The ledger's report.md section: per attack and setting, gap recovered on the held-out
    forget facts with its interval beside its control's and the base model's; the figure
    (embedded when ``figure_png``, its HTML linked always)."""
    rows = headline_rows(table)
    task = plotting.headline_task(table)
    compact = pd.DataFrame(
        {
            "attack": rows["attack"],
            "setting": rows["setting"],
            "step": rows["step"],
            "unlearned": _cell(rows, ""),
            "control": rows["control"],
            "control gap": _cell(rows, "control_"),
            "base": _cell(rows, "base_"),
            "retain acc (unlearned)": rows["retain_accuracy"],
        }
    )
    png = FIGURE_FILE.removesuffix(".html") + ".png"
    figure = [f"![recovery ledger]({png})", ""] if figure_png else []
    lines = [
        SECTION,
        "",
        f"Gap recovered on {task} (95% paired bootstrap interval over items and, for "
        "fine-tuning, its seeds; one RMU seed) "
        "by each attack on the unlearned model at its last step, beside the same for its "
        "control; `base` is the attack on the base model (the ceiling). Gap recovered = (acc - "
        "acc_unlearned) / (acc_base - acc_unlearned) on one scale for every row, so a control "
        f"can fall below 0. The controls: {_controls_text(has_oracle(table))}.",
        "",
        markdown_table(compact),
        "",
        *figure,
        f"Every row, every model, task and step: [{RunFiles.LEDGER}]({RunFiles.LEDGER}); "
        f"figure: [ledger]({FIGURE_FILE}).",
    ]
    return "\n".join(lines) + "\n"


def _controls_text(oracle: bool) -> str:
    """What the report says each attack's control is, with or without an oracle twin."""
    common = "random directions of matched dimension and norm for an ablation, "
    if oracle:
        return (
            f"{common}the oracle twin that never saw the held-out facts for fine-tuning, the "
            "base model for quantisation. The oracle may answer V worse than the unlearned "
            "model; what an attack brings back beyond what it teaches the oracle was hidden, "
            "not removed"
        )
    return (
        f"{common}benign fine-tuning on unrelated text with the same schedule for relearning, "
        "the base model for benign fine-tuning and quantisation. **This model has no oracle "
        "twin** (a model pretrained without V's facts does not exist for it), so what "
        "relearning on T teaches a model that never knew V is not measured: recovery of V "
        "beyond the unrelated-text control is evidence, not proof, that the facts were hidden"
    )


def ledger_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """metrics.json's ``"ledger"`` entry: the headline task and, per attack and setting,
    gap recovered on it with its interval, its control's and the base model's
    (:func:`headline_rows`); the oracle twin's accuracy before fine-tuning when present."""
    rows = headline_rows(table)
    gaps: dict[str, dict[str, Any]] = {}
    for row in rows.itertuples(index=False):
        gaps.setdefault(row.attack, {})[row.setting] = {
            "step": row.step,
            "value": row.gap_recovered,
            "ci_low": row.ci_low,
            "ci_high": row.ci_high,
            "retain_accuracy": row.retain_accuracy,
            "control": {
                "model_setting": row.control,
                "value": row.control_gap_recovered,
                "ci_low": row.control_ci_low,
                "ci_high": row.control_ci_high,
            },
            "base": {
                "value": row.base_gap_recovered,
                "ci_low": row.base_ci_low,
                "ci_high": row.base_ci_high,
            },
        }
    oracle = table[(table["model"] == "oracle") & (table["step"] == 0)]
    oracle = oracle.drop_duplicates("task").set_index("task")["accuracy"]
    return {
        "task": plotting.headline_task(table),
        "gap_recovered": gaps,
        "oracle_accuracy_before_finetuning": {k: float(v) for k, v in oracle.items()},
    }


def ledger_summary(table: pd.DataFrame, run_dir: str | os.PathLike) -> str:
    """What ``unlearn-interp ledger`` prints: gap recovered on the headline forget task of
    every attack at its last step, per model, with its interval."""
    task = plotting.headline_task(table)
    rows = plotting.last_steps(table[(table["task"] == task) & (table["attack"] != "none")])
    lines = [f"gap recovered on {task} (95% interval), every attack at its last step:"]
    for row in rows.itertuples(index=False):
        lines.append(
            f"{row.attack:<16}{row.setting:<34} {row.model:<10} step {row.step:<4} "
            f"{row.gap_recovered:6.2f} [{row.ci_low:5.2f}, {row.ci_high:5.2f}]"
        )
    lines.append(f"table: {run_dir}/{RunFiles.LEDGER}; figure: {run_dir}/{FIGURE_FILE}")
    return "\n".join(lines) + "\n"


def ledger_lines(ledger: Mapping[str, Any] | None) -> list[str]:
    """The recovery ledger's headline lines in a demo's summary, from metrics.json's
    ``"ledger"`` entry: gap recovered per attack and setting, and its control."""
    if not ledger:
        return []
    lines = [f"recovery ledger, gap recovered on {ledger['task']} (95% interval) | control:"]
    for attack, settings in ledger["gap_recovered"].items():
        for setting, gap in settings.items():
            control = gap["control"]
            lines.append(
                f"  {attack:<16}{setting:<30} {gap['value']:6.2f} [{gap['ci_low']:5.2f}, "
                f"{gap['ci_high']:5.2f}] | {control['model_setting']} {control['value']:.2f}"
            )
    return lines
