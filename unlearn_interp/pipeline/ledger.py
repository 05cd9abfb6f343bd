"""The recovery ledger: is the knowledge gone or hidden? Every attack on an organism run's
unlearned model, every control, one table.

Each attack is applied to the unlearned model and to its controls (the same attack on the base
model, the ceiling; a random direction or subspace of matched dimension and norm for an
ablation; the oracle twin, which never saw the held-out facts, for fine-tuning). Every model is
scored question by question, so accuracy and gap recovered get paired bootstrap intervals over
items (:mod:`unlearn_interp.stats`). Gap recovered is measured on one scale for every row,
``(acc - acc_unlearned) / (acc_base - acc_unlearned)`` with the plain models' accuracies: 0 is
where unlearning left the model, 1 is the base model before unlearning.

The work is split into resumable steps of the run directory, each writing its per-item rows
(``tables/ledger_<part>_per_item.csv``); the ``ledger`` step turns them into
``tables/ledger.csv`` and ``figures/ledger.html``, so an interrupted ledger resumes at the
first unfinished part. The parts run here one after another, or on the workers of an executor
(``executor=make_executor("ray", workers=2)``, :mod:`unlearn_interp.executors`) with the same
table; a ledger started one way can be finished the other.

    >>> table = run_ledger("runs/demo")                                    # doctest: +SKIP
    >>> table.query("task == 'hazardous' and model == 'unlearned'")        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import unlearn_interp.pipeline.steps as steps
from unlearn_interp import artifacts, organism, plotting, stats
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.attacks.finetune import FinetuneConfig
from unlearn_interp.checks import is_int
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import Executor
from unlearn_interp.pipeline.ledger_parts import (
    FORGET_TASKS,
    LedgerContext,
    control_key,
    has_oracle,
    part_names,
    read_parts,
    run_parts,
)
from unlearn_interp.pipeline.ledger_subjects import (
    LedgerSubject,
    model_demo_subject,
    organism_subject,
    run_settings,
    weights_folder,
)
from unlearn_interp.pipeline.report import markdown_table
from unlearn_interp.pipeline.run_variants import RunVariants
from unlearn_interp.pipeline.rundir import FIGURES, RunDir
from unlearn_interp.pipeline.study_assets import asset_paths, build_study
from unlearn_interp.pipeline.study_config import Study

log = logging.getLogger(__name__)

KEY = ("attack", "setting", "model", "step")  # one evaluated model; with ``task``, one row
COLUMNS = (*KEY, "role", "task", "accuracy", "n", "accuracy_ci_low", "accuracy_ci_high",
           "gap_recovered", "ci_low", "ci_high")  # fmt: skip
REFERENCE = {"base": ("none", "plain", "base", 0), "unlearned": ("none", "plain", "unlearned", 0)}
FIGURE = f"{FIGURES}/ledger.html"
# The grid, reported whole: full weights at two learning rates, and only the MLP output
# matrices (the tensors RMU edits) at the larger one.
DEFAULT_FINETUNE = (
    FinetuneConfig(steps=50, lr=1e-4, params="all"),
    FinetuneConfig(steps=50, lr=1e-3, params="all"),
    FinetuneConfig(steps=50, lr=1e-3, params="mlp_out"),
)
SECTION = "## Recovery ledger"


@dataclasses.dataclass(frozen=True)
class LedgerSettings:
    """What the ledger runs besides the run's own files: ``seed`` splits the facts into T and
    V, draws the random controls and seeds the bootstrap (``n_boot`` replicates, 95%
    percentile intervals); ``bits`` are the quantisation widths; ``finetune`` the fine-tuning
    runs (each on every model, for relearning and for benign fine-tuning; the whole grid is
    reported), each run once per seed of ``finetune_seeds`` (the order its batches are drawn
    in; fine-tuning rows' intervals resample items and these seeds); ``batch_size`` is the
    scoring batch."""

    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 32
    bits: tuple[int, ...] = (8, 4)
    finetune: tuple[FinetuneConfig, ...] = DEFAULT_FINETUNE
    finetune_seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        seeds = list(self.finetune_seeds)
        if (
            not seeds
            or len(set(seeds)) != len(seeds)
            or not all(is_int(s) and s >= 0 for s in seeds)
        ):
            raise UnlearnInterpError(
                f"finetune_seeds must be distinct non-negative integers, at least one; got {seeds}"
            )

    def to_dict(self) -> dict[str, Any]:
        """As config.json records it (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


DEFAULT_SETTINGS = LedgerSettings()
# The real model's grid, reported whole, chosen by the objective and the run-time budget before
# any recovery number was seen: full weights (RTT and Lucki et al. fine-tune everything) at a
# gentle and a strong learning rate for a 135M model, 10 steps of 4 texts (T has about 78
# questions, so 40 texts is half an epoch; scored at steps 0, 5 and 10), one seed, texts cut
# to 64 tokens. Measured before choosing: a full-weight step took 8-50 s and scoring 0.9 s per
# question on one shared CPU core, so a larger grid would not fit the ledger's run time.
MODEL_DEMO_FINETUNE = tuple(
    FinetuneConfig(steps=10, lr=lr, params="all", batch_size=4, max_len=64, eval_every=5)
    for lr in (1e-5, 1e-4)
)
MODEL_DEMO_SETTINGS = LedgerSettings(finetune=MODEL_DEMO_FINETUNE, finetune_seeds=(0,))


def run_ledger(
    run_dir: str | os.PathLike,
    *,
    settings: LedgerSettings | None = None,
    cache_dir: str | os.PathLike | None = None,
    org: organism.Organism | None = None,
    study: Study | None = None,
    force: bool = False,
    progress: bool = True,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Every attack on the unlearned model of demo run ``run_dir`` and on its controls: writes
    ``tables/ledger.csv`` (columns :data:`COLUMNS`), ``figures/ledger.html`` (and PNG where
    static export works) and a report.md section; returns the table.

    The run's job decides what is attacked (:mod:`~unlearn_interp.pipeline.ledger_subjects`):
    an organism demo's model (the organism is ``org`` when given, which must be the run's size
    and seed, else read from its cache ``cache_dir``, default the toolkit's), or a real-model
    demo's first seed (the study is ``study`` when given, else its model and data are read
    from the asset cache, fetched if missing). ``settings`` default to :data:`DEFAULT_SETTINGS`
    for the organism and :data:`MODEL_DEMO_SETTINGS` for the real model. Finished parts are not
    recomputed (``force=True`` recomputes them); the model's weights are as they were
    afterwards. ``executor`` runs the unfinished parts (default serial, here; a Ray executor
    ships the model once and computes the same table; a part failing on every attempt raises
    :class:`~unlearn_interp.pipeline.ledger_parts.LedgerPartsFailed` once the others are
    written). A demo run rewrites report.md without the ledger section; running the ledger
    again (nothing is recomputed) puts it back.

    >>> table = run_ledger("runs/demo", cache_dir="~/.cache/unlearn_interp")  # doctest: +SKIP
    >>> table = run_ledger("runs/smollm2")                                    # doctest: +SKIP
    """
    run = open_run(run_dir)
    demo = run_settings(run)
    variants = RunVariants(RunDir(weights_folder(run, demo)))
    variants.plain()  # unreadable weights: one sentence before the model is loaded
    settings = settings or default_settings(demo["job"])
    _check_ledger_settings(run, settings, force)
    if demo["job"] == "demo":
        org = org or organism.load_organism(demo["size"], demo["seed"], cache_dir=cache_dir,
                                            progress=progress, dtype=_dtype(demo))  # fmt: skip
        _check_organism(org, demo)
        subject = organism_subject(variants, org, settings.seed, cache_dir, progress)
    else:
        study = study or _load_study(demo, cache_dir, progress)
        subject = model_demo_subject(variants, study, settings.seed)
    return _run_parts(run, subject, settings, force, executor=executor)


def with_ledger(
    run: RunDir,
    metrics: Mapping[str, Any],
    settings: LedgerSettings,
    *,
    study: Study | None = None,
    force: bool = False,
    progress: bool = True,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """The ledger as a real-model demo's last step (resumable part by part, its parts run by
    ``executor``; its report section appended to report.md) and metrics.json with a
    ``"ledger"`` entry added."""
    table = run_ledger(run.root, settings=settings, study=study, force=force, progress=progress,
                       executor=executor)  # fmt: skip
    metrics = {**metrics, "ledger": ledger_metrics(table)}
    artifacts.write_json(run.path(RunFiles.METRICS), metrics)
    return metrics


def default_settings(job: str) -> LedgerSettings:
    """The ledger's settings when none are given: :data:`MODEL_DEMO_SETTINGS` for a real-model
    demo run, the default :class:`LedgerSettings` for an organism demo run."""
    return MODEL_DEMO_SETTINGS if job == "model_demo" else DEFAULT_SETTINGS


def _load_study(demo: Mapping[str, Any], cache_dir: str | os.PathLike | None,
                progress: bool) -> Study:  # fmt: skip
    """The real-model study of a run's settings (model and data from the asset cache)."""
    paths = asset_paths(cache_dir, progress)
    return build_study(paths, demo["seeds"], demo["topic"], None, _dtype(demo))


def _run_parts(
    run: RunDir,
    subject: LedgerSubject,
    settings: LedgerSettings,
    force: bool,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Every part of the ledger on ``subject`` as a resumable step (run by ``executor``), then
    the table, figure and report section (rebuilt whenever a part was computed)."""
    context = LedgerContext(run, subject, settings.seed, settings.batch_size, settings.bits,
                            settings.finetune, settings.finetune_seeds)  # fmt: skip
    computed = run_parts(context, force, executor)
    outputs = [RunFiles.LEDGER, FIGURE]
    build = lambda: _write_ledger(run, FORGET_TASKS, settings)  # noqa: E731
    _forced_step(run, "ledger", outputs, build, force or bool(computed))
    table = pd.read_csv(run.path(RunFiles.LEDGER))
    write_report_section(run, table)
    return table


def open_run(run_dir: str | os.PathLike) -> RunDir:
    """The run directory ``run_dir``, which must exist (the ledger never starts a run)."""
    if not Path(run_dir).is_dir():
        raise UnlearnInterpError(
            f"{run_dir} is not a run directory; make one with `unlearn-interp demo --out {run_dir}`"
        )
    return RunDir(run_dir)  # not force: the demo's own steps keep their records


def _check_organism(org: organism.Organism, demo: Mapping[str, Any]) -> None:
    if (org.config.size, org.config.seed) != (demo["size"], demo["seed"]):
        raise UnlearnInterpError(
            f"the organism given is size {org.config.size!r} seed {org.config.seed}, but the "
            f"run was made with size {demo['size']!r} seed {demo['seed']}"
        )


def _dtype(demo: Mapping[str, Any]) -> torch.dtype:
    """The torch dtype the demo ran in (float32 unless its settings name another)."""
    return getattr(torch, str(demo.get("dtype", "float32")))


def _check_ledger_settings(run: RunDir, settings: LedgerSettings, force: bool) -> None:
    """Refuse to resume a ledger made with other settings; record these."""
    previous = run.config().get("ledger")
    if previous is not None and previous != settings.to_dict() and not force:
        raise UnlearnInterpError(
            f"{run.root} holds a ledger made with other settings ({previous}); use --force"
        )
    run.record_config("ledger", settings.to_dict())


def _forced_step(
    run: RunDir, name: str, outputs: Sequence[str], compute: Callable[[], None], force: bool
) -> None:
    """``run.step``, recomputing when ``force`` (the run itself is not opened with force)."""
    if force:
        for output in outputs:
            run.path(output).unlink(missing_ok=True)
    run.step(name, outputs, compute)


# ---------------------------------------------------------------------------------------------
# From per-item rows to the ledger
# ---------------------------------------------------------------------------------------------


def _write_ledger(run: RunDir, forget_tasks: Sequence[str], settings: LedgerSettings) -> None:
    per_item = read_parts(run, part_names(settings.finetune_seeds))
    table = ledger_table(per_item, forget_tasks, settings.n_boot, settings.seed)
    with artifacts.atomic_path(run.path(RunFiles.LEDGER)) as tmp:
        table.to_csv(tmp, index=False)
    steps.save_figures(run, {"ledger": plotting.plot_ledger(table)})


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
        tidy, base=names[REFERENCE["base"]], unlearned=names[REFERENCE["unlearned"]],
        variants=list(names.values()), forget_tasks=list(forget_tasks), n_boot=n_boot, seed=seed,
    )  # fmt: skip
    return _assemble(keys, accuracy, gaps[gaps["task"] != stats.MEAN_TASK])


def _assemble(keys: pd.DataFrame, accuracy: pd.DataFrame, gaps: pd.DataFrame) -> pd.DataFrame:
    """The ledger's rows from the two interval tables, in the order the models were scored."""
    accuracy = accuracy.rename(columns={"ci_low": "accuracy_ci_low", "ci_high": "accuracy_ci_high",
                                        "n_items": "n"})  # fmt: skip
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
        control = forget.loc[control_at]
        base = forget.loc[(attack, setting, "base")]
        rows.append({
            "attack": attack, "setting": setting, "step": int(row["step"]), "task": task,
            **_gap(row, ""), "control": control_label(attack, *control_at),
            **_gap(control, "control_"), **_gap(base, "base_"),
            "retain_accuracy": float(retain.get(key, float("nan"))),
        })  # fmt: skip
    return pd.DataFrame(rows)


def control_label(attack: str, control_attack: str, setting: str, model: str) -> str:
    """``"oracle: lr=0.001,..."``: the control's model and setting, and its attack when it is
    not ``attack``'s own (``"unlearned: benign_finetune lr=0.001,..."``)."""
    other = f"{control_attack} " if control_attack != attack else ""
    return f"{model}: {other}{setting}"


def _gap(row: pd.Series, prefix: str) -> dict[str, float]:
    return {f"{prefix}{name}": float(row[name]) for name in ("gap_recovered", "ci_low", "ci_high")}


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
    compact = pd.DataFrame({
        "attack": rows["attack"], "setting": rows["setting"], "step": rows["step"],
        "unlearned": _cell(rows, ""), "control": rows["control"],
        "control gap": _cell(rows, "control_"), "base": _cell(rows, "base_"),
        "retain acc (unlearned)": rows["retain_accuracy"],
    })  # fmt: skip
    figure = [f"![recovery ledger]({FIGURE.removesuffix('.html')}.png)", ""] if figure_png else []
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
        f"figure: [ledger]({FIGURE}).",
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
            "step": row.step, "value": row.gap_recovered, "ci_low": row.ci_low,
            "ci_high": row.ci_high, "retain_accuracy": row.retain_accuracy,
            "control": {"model_setting": row.control, "value": row.control_gap_recovered,
                        "ci_low": row.control_ci_low, "ci_high": row.control_ci_high},
            "base": {"value": row.base_gap_recovered, "ci_low": row.base_ci_low,
                     "ci_high": row.base_ci_high},
        }  # fmt: skip
    oracle = table[(table["model"] == "oracle") & (table["step"] == 0)]
    oracle = oracle.drop_duplicates("task").set_index("task")["accuracy"]
    return {"task": plotting.headline_task(table), "gap_recovered": gaps,
            "oracle_accuracy_before_finetuning": {k: float(v) for k, v in oracle.items()}}  # fmt: skip


def write_report_section(run: RunDir, table: pd.DataFrame) -> None:
    """Put the ledger section at the end of report.md (replacing an older one); without a
    report.md it is the whole file."""
    path = run.path(RunFiles.REPORT)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    kept = text.split(f"\n{SECTION}\n")[0].rstrip("\n")
    section = ledger_markdown(table, run.path(FIGURE).with_suffix(".png").is_file())
    artifacts.write_text(path, f"{kept}\n\n{section}" if kept else section)


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
    lines.append(f"table: {run_dir}/{RunFiles.LEDGER}; figure: {run_dir}/{FIGURE}")
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
