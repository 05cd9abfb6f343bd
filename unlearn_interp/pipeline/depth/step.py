"""The depth profile step: where in the network the forgotten knowledge still is, layer by
layer, for the base model, the unlearned one, its ablations and the attacked models.

Four measurements of :mod:`unlearn_interp.analysis` at every layer, each a table of the run:

* linear probes (:func:`analysis.layer_probes`): is the answer still linearly readable
  (``own``), does the base model's readout still work (``reference``), a shuffled-label control;
* the logit lens and a tuned lens fitted on retain text (:func:`analysis.logit_lens`,
  :func:`analysis.fit_tuned_lens`), and whether the tuned lens is closer to the model's own
  output than the plain one (:func:`analysis.lens_kl` on held-out retain text);
* linear CKA and mean cosine to the base model, forget vs retain prompts
  (:func:`analysis.representation_similarity`);

and one figure (:func:`plotting.plot_depth_profile`), with the run's layer profile (junk norm
and cosine) as its last rows. :class:`Depth` is the step; :func:`organism_depth_inputs` and
:func:`question_depth_inputs` say what it reads on the organism and on a real model.

    >>> Depth(question_depth_inputs, REAL_MODEL_SETTINGS)                   # doctest: +SKIP
    >>> pd.read_csv("runs/demo/tables/depth_probes.csv").query("probe == 'own'")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pandas as pd

from unlearn_interp import analysis, attacks, organism, plotting
from unlearn_interp.analysis.lens import decision_questions
from unlearn_interp.analysis.probes import Readouts, organism_readouts, readouts
from unlearn_interp.analysis.questions import QuestionSet, ResidStore
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.attacks.finetune import FinetuneConfig
from unlearn_interp.models import Model
from unlearn_interp.organism.oracle import split_facts, t_documents
from unlearn_interp.pipeline.depth.summary import (
    FIGURE,
    TABLES,
    depth_markdown,
    depth_metrics,
    read_depth_tables,
)
from unlearn_interp.pipeline.rundir import FIGURES
from unlearn_interp.pipeline.step import Run, StepOutput, StepSummary, figure_files
from unlearn_interp.pipeline.subject import Subject, Task
from unlearn_interp.pipeline.variants import RunVariants
from unlearn_interp.variants import Variant

log = logging.getLogger(__name__)

# The ablations of the unlearned model the profile shows beside it and base, when the run has them.
RUN_ROLES = ("ablated", "subspace_ablated")


@dataclasses.dataclass(frozen=True)
class DepthSettings:
    """How the depth step measures: ``n_folds`` entity folds and ``n_boot`` bootstrap draws for
    the probes (seeded by ``seed``); the tuned lens trained ``lens_steps`` steps on the first
    ``lens_texts`` retain texts and compared with the logit lens on the next ``lens_texts``
    (half the retain texts each when there are fewer);
    the attacked models shown beside the run's variants: the unlearned model quantised to
    ``quantize_bits`` (None: not shown) and fine-tuned by ``relearn`` on the relearning text
    (None, or no relearning text: not shown). Similarity compares every real token of the
    prompts (``similarity_positions``; CKA on a handful of last tokens is biased upwards).
    ``layers`` (None: every layer) are the layers measured, the tuned lens's included;
    ``n_shuffles`` the shuffled-label control's draws; ``lens_max_tokens`` caps the tokens per
    tuned-lens step (None: every token). ``batch_size`` is the forward batch."""

    layers: tuple[int, ...] | None = None
    n_folds: int = 5
    n_shuffles: int = 5
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 32
    lens_steps: int = 200
    lens_texts: int = 64
    lens_max_tokens: int | None = None
    quantize_bits: int | None = 4
    relearn: FinetuneConfig | None = FinetuneConfig(steps=50, lr=1e-3, params="all")
    similarity_positions: str = "all"


DEFAULT_DEPTH = DepthSettings()  # the organism's
# The real-model study's depth step (SmolLM2-135M, 30 layers, d_model 576, 2 CPU cores): 5
# layers including the RMU layer (7), one shuffle, a 30-step tuned lens on at most 64 tokens a
# step, no relearned model (the ledger fine-tunes it). Chosen for the run time, before any result
# was seen. Measured on a quiet machine: 5.1 min (tuned lens 68 s, KL 15 s, probes 81 s, lens
# table 95 s with the probes' residuals reused, CKA 46 s); with 7 layers and 40 tuned-lens steps
# about 7 min before the reuse, and batches of 32 were slower than 16 (padding).
REAL_MODEL_SETTINGS = DepthSettings(
    layers=(0, 7, 14, 22, 29),
    n_shuffles=1,
    batch_size=16,
    lens_steps=30,
    lens_texts=16,
    lens_max_tokens=64,
    relearn=None,
)


@dataclasses.dataclass
class DepthInputs:
    """What the depth step reads besides the run's variants: the forget questions as probes
    read them (label -> readouts), the forget and retain questions as the lens reads them
    (prompt set -> questions), forget and retain prompts for the similarity, retain text for
    the tuned lens and the relearning text (about half the forget facts; None: no relearned
    model)."""

    probe_sets: Mapping[str, Readouts | QuestionSet]
    lens_sets: Mapping[str, QuestionSet]
    prompts: Mapping[str, Sequence[str]]
    lens_texts: Sequence[str]
    relearn_texts: Sequence[str] | None = None


@dataclasses.dataclass(frozen=True)
class Depth:
    """The depth profile of the run's variants and attacked models, measured with ``settings``
    on what ``inputs`` gives for the run (:func:`organism_depth_inputs`,
    :func:`study_depth_inputs`): the :data:`TABLES` and ``figures/depth_profile.html``; metrics
    entry ``depth`` and its report section (:mod:`.summary`)."""

    inputs: Callable[[Subject], DepthInputs]
    settings: DepthSettings = DEFAULT_DEPTH
    name: str = "depth"

    def files(self, run: Run) -> list[str]:
        return [RunFiles.table(name) for name in TABLES] + figure_files([FIGURE])

    def compute(self, run: Run) -> StepOutput:
        model, inputs = run.subject.model, self.inputs(run.subject)
        with _timed("attacked models"):
            chosen = depth_variants(model, run.variants, inputs, self.settings)
        tables = depth_tables(model, chosen, inputs, self.settings, run.progress)
        figure = depth_figure(tables, _profile(run), run.subject.layer, run.subject.unlearned)
        return StepOutput(tables=tables, figures={FIGURE: figure})

    def summary(self, run: Run) -> StepSummary:
        tables = read_depth_tables(run.dir)
        layer = run.subject.layer
        png = run.dir.path(f"{FIGURES}/{FIGURE}.png").is_file()
        return StepSummary(
            metrics={"depth": depth_metrics(tables, layer)},
            section=depth_markdown(tables, layer, png),
        )


def _profile(run: Run) -> pd.DataFrame | None:
    """The run's layer profile (junk norm and cosine), shown under the depth profile, if any."""
    path = run.dir.path(RunFiles.LAYER_PROFILE)
    return pd.read_csv(path) if path.is_file() else None


def depth_variants(
    model: Model, variants: RunVariants, inputs: DepthInputs, settings: DepthSettings
) -> list[Variant]:
    """The run's plain and junk-ablated variants it has (:data:`RUN_ROLES`), then the attacked
    unlearned models: quantised (``<unlearned>_rtn<bits>``) and relearned on the relearning
    text (``<unlearned>_relearned``)."""
    u = variants.unlearned
    wanted = ["base", u, *(f"{u}_{suffix}" for suffix in RUN_ROLES)]
    available = variants.available()
    chosen = list(variants.variants([n for n in wanted if n in available]).values())
    unlearned = variants.variant(u)
    if settings.quantize_bits is not None:
        bits = settings.quantize_bits
        chosen.append(attacks.quantized_variant(model, unlearned, bits, name=f"{u}_rtn{bits}"))
    if settings.relearn is not None and inputs.relearn_texts:
        cfg = dataclasses.replace(settings.relearn, seed=settings.seed)
        relearned = attacks.finetuned_variant(
            model, unlearned, inputs.relearn_texts, cfg, f"{u}_relearned"
        )
        chosen.append(relearned)
    return chosen


def depth_tables(
    model: Model,
    variants: Sequence[Variant],
    inputs: DepthInputs,
    settings: DepthSettings,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Every measurement of the profile, by table name (:data:`TABLES`); how long each took
    is logged."""
    n = min(settings.lens_texts, len(inputs.lens_texts) // 2)  # the held-out half as large
    fit_texts, held_out = list(inputs.lens_texts[:n]), list(inputs.lens_texts[n : 2 * n])
    layers = settings.layers
    store = ResidStore()  # the probes and the lens read mostly the same question contexts
    with _timed("tuned lens fit"):
        lens = analysis.fit_tuned_lens(
            model,
            fit_texts,
            layers=layers,
            steps=settings.lens_steps,
            max_tokens=settings.lens_max_tokens,
            seed=settings.seed,
            progress=progress,
        )
    with _timed("lens KL"):
        kl = pd.concat(
            [
                analysis.lens_kl(model, None, held_out, layers),
                analysis.lens_kl(model, lens, held_out, layers),
            ],
            ignore_index=True,
        )
    with _timed("probes"):
        probes = analysis.layer_probes(
            model,
            variants,
            inputs.probe_sets,
            layers=layers,
            n_folds=settings.n_folds,
            seed=settings.seed,
            n_shuffles=settings.n_shuffles,
            n_boot=settings.n_boot,
            batch_size=settings.batch_size,
            progress=progress,
            store=store,
        )
    with _timed("logit and tuned lens"):
        lens_table = analysis.logit_lens(
            model,
            variants,
            inputs.lens_sets,
            layers=layers,
            lens=lens,
            batch_size=settings.batch_size,
            n_boot=settings.n_boot,
            seed=settings.seed,
            store=store,
        )
    with _timed("similarity"):
        similarity = analysis.representation_similarity(
            model,
            variants,
            inputs.prompts,
            layers=layers,
            positions=settings.similarity_positions,
            batch_size=settings.batch_size,
        )
    return dict(zip(TABLES, (probes, lens_table, kl, similarity), strict=True))


@contextlib.contextmanager
def _timed(what: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    log.info("depth: %s in %.1f s", what, time.perf_counter() - start)


def depth_figure(
    tables: Mapping[str, pd.DataFrame],
    profile: pd.DataFrame | None,
    layer: int,
    unlearned: str = "rmu",
) -> Any:
    """The depth profile figure, with the run's layer ``profile`` (junk norm and cosine) below
    when there is one."""
    return plotting.plot_depth_profile(
        probes=tables["depth_probes"],
        lens=tables["depth_lens"],
        similarity=tables["depth_similarity"],
        profile=profile,
        rmu_layer=layer,
        unlearned=unlearned,
    )


# ---------------------------------------------------------------------------------------------
# What the step reads on each kind of subject
# ---------------------------------------------------------------------------------------------


def organism_depth_inputs(org: organism.Organism, seed: int = 0) -> DepthInputs:
    """The organism's hazardous questions (choices and attribute values) and benign ones,
    its hazardous and benign prompts, its retain corpus for the tuned lens, and the
    documents about the T half of the hazardous entities (the ledger's split with ``seed``)
    for the relearned model."""
    groups = {d: organism.fact_entities(org, d) for d in ("hazardous", "benign")}
    lens_sets = {
        name: decision_questions(
            org.model, org.mcq[domain], org.mcq_mode, org.qa_template, groups[domain]
        )
        for name, domain in (("forget", "hazardous"), ("retain", "benign"))
    }
    return DepthInputs(
        probe_sets=organism_readouts(org, "hazardous"),
        lens_sets=lens_sets,
        prompts={"forget": org.hazardous_prompts, "retain": org.benign_prompts},
        lens_texts=org.retain_corpus,
        relearn_texts=t_documents(org, split_facts(org.world, seed=seed)),
    )


def question_depth_inputs(subject: Subject) -> DepthInputs:
    """A subject's questions (a real model's): its gap tasks for the probes and the lens, its
    retain tasks (neither forget nor report-only) for the lens, each question its own group;
    its prompts, its retain corpus for the tuned lens (the retain prompts without one); no
    relearned model (its fine-tuning costs minutes on a real model: the ledger has it)."""
    model, tasks = subject.model, subject.tasks
    forget = subject.gap_tasks
    retain = [t for t in tasks if t not in subject.forget_tasks and t not in subject.report_only]
    lens_sets = {
        "forget": _joined(model, tasks, forget, decision_questions),
        "retain": _joined(model, tasks, retain, decision_questions),
    }
    probe_sets = {"choice": _joined(model, tasks, forget, readouts)}
    corpus = [text for texts in subject.retain_corpora for text in texts]
    return DepthInputs(probe_sets, lens_sets, subject.prompts, corpus or subject.prompts["retain"])


def _joined(model: Model, tasks: Mapping[str, Task], names: Sequence[str], build: Any) -> Any:
    """The questions of the tasks ``names`` as one set built by ``build`` (``readouts`` or
    ``decision_questions``), each question its own group (task and index)."""
    parts = [
        build(
            model,
            tasks[name].items,
            tasks[name].mode,
            tasks[name].prompt_template,
            [f"{name}:{i}" for i in range(len(tasks[name].items))],
        )
        for name in names
    ]
    return parts[0] if len(parts) == 1 else type(parts[0]).concat(parts)
