"""Linear probes per layer: is the answer to a question still linearly in the residual stream?

**The probe family, and why.** From the residual stream ``h`` where the model reads out its
answer, predict the correct choice. On the organism each answer value belongs to one or two
entities, and probes train on some entities and test on others, so a probe with one class per
value could never predict a value it did not see as an answer. This probe scores each
*candidate* ``c`` through the model's own unembedding vector ``u_c`` (the ``W_U`` column of the
candidate's token, no final norm) with one learned weight vector ``w``::

    score(h, c) = w . (z(h) * u_c)        z(h) = (h - mean) / std, per dimension, training fold

No per-candidate bias (candidates are interchangeable). ``w`` is fitted by multinomial logistic
regression (softmax over the question's candidates, cross-entropy, L2 penalty ``l2 |w|^2``,
Newton's method in float64 from zero: deterministic). It is linear in ``h``, needs no class
seen in training, and at the last layer it holds a logit-lens-like readout (``w`` of the final
norm's scale) as one of its solutions, up to the norm's per-token centring and scaling. It is
deliberately weak: a probe free to rotate ``h`` (a full ``d_model x d_model`` map) cannot be
fitted on the tens of questions per entity available here.

**Where h is read, and through which token.** A candidate is read at the position where the
model predicts the token that tells it apart from the question's other candidates (its
*deciding* token: the first token at which its continuation differs from every other's), with
the context extended by the continuation tokens before it. When the candidates' first tokens
differ (letters " A".." D", most real answers) that is the last context token and the first
token, the plain readout; on the organism most answers start with " the", where the last
context token carries no answer at all, so the readout is after " the". :func:`readouts` builds
it from MCQ items; a :class:`QuestionSet` passed instead is read with first tokens at the last
context token (:func:`first_token_readouts`).

**Three probes per variant and layer**, grouped k-fold by entity (every question tested once, by
a probe that never saw its entity): ``own`` (trained and tested on the variant: is the
information still linearly there?), ``reference`` (trained on the reference variant, tested on
this one: does the base readout still work?), ``shuffled`` (own activations, training answers
permuted across training questions, ``n_shuffles`` times: the control, near chance). A tie for
the top score counts as wrong. Accuracies carry 95% bootstrap intervals over questions (and
over the shuffles for the control) from :func:`stats.accuracy_intervals`.

    >>> sets = organism_readouts(org, "hazardous")             # {"choice": ..., "value": ...}  # doctest: +SKIP
    >>> table = layer_probes(org.model, [base, rmu], sets)     # doctest: +SKIP
    >>> table.query("probe == 'own' and label == 'choice'")[["variant", "layer", "accuracy"]]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from unlearn_interp import models, stats
from unlearn_interp.activations import check_layers, unembedding_vectors
from unlearn_interp.analysis.questions import (
    QuestionSet,
    ResidStore,
    checked_groups,
    question_resid,
)
from unlearn_interp.checks import is_int
from unlearn_interp.data import QA_TEMPLATE, MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.evaluation.mcq import mcq_requests
from unlearn_interp.models import Model
from unlearn_interp.organism.cache import Organism
from unlearn_interp.organism.values import fact_entities, value_items
from unlearn_interp.variants import Variant

PROBES = ("own", "reference", "shuffled")
COLUMNS = ("variant", "label", "probe", "layer", "accuracy", "ci_low", "ci_high", "n", "chance")


@dataclasses.dataclass(frozen=True)
class Readouts:
    """Where each candidate is read: question ``i``'s candidate ``c`` is scored from the
    residual stream at the last token of ``contexts[rows[i, c]]``, through the unembedding
    vector of ``tokens[i, c]``; ``answers[i]`` is the correct candidate, ``groups[i]`` what
    train/test splits keep together (the entity)."""

    contexts: tuple[tuple[int, ...], ...]
    rows: Int[Tensor, "n_questions n_choices"]
    tokens: Int[Tensor, "n_questions n_choices"]
    answers: Int[Tensor, " n_questions"]
    groups: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.groups)
        if not n:
            raise UnlearnInterpError("a readout set needs at least one question")
        if self.rows.shape != self.tokens.shape or self.rows.shape[0] != n:
            raise UnlearnInterpError(
                f"readout rows {tuple(self.rows.shape)}, tokens {tuple(self.tokens.shape)} and "
                f"{n} groups do not describe the same questions"
            )
        if self.answers.shape != (n,):
            raise UnlearnInterpError(f"{len(self.answers)} answers given for {n} questions")
        if not 0 <= int(self.answers.min()) <= int(self.answers.max()) < self.rows.shape[1]:
            raise UnlearnInterpError(f"an answer is not one of the {self.rows.shape[1]} candidates")
        if not 0 <= int(self.rows.min()) <= int(self.rows.max()) < len(self.contexts):
            raise UnlearnInterpError("a readout row points past the readout contexts")

    def __len__(self) -> int:
        return len(self.groups)

    def chance(self) -> float:
        """The accuracy of a uniform guess among each question's candidates."""
        return 1.0 / self.rows.shape[1]

    @classmethod
    def concat(cls, sets: Sequence[Readouts]) -> Readouts:
        """The questions of ``sets`` one after the other (every set with as many candidates)."""
        widths = {s.rows.shape[1] for s in sets}
        if len(widths) != 1:
            raise UnlearnInterpError(f"readouts with {sorted(widths)} candidates cannot be joined")
        offsets = np.cumsum([0, *(len(s.contexts) for s in sets[:-1])])
        return cls(
            tuple(c for s in sets for c in s.contexts),
            torch.cat([s.rows + int(o) for s, o in zip(sets, offsets, strict=True)]),
            torch.cat([s.tokens for s in sets]),
            torch.cat([s.answers for s in sets]),
            tuple(g for s in sets for g in s.groups),
        )


def deciding_positions(continuations: Sequence[Sequence[int]]) -> list[int]:
    """For each continuation, the first position at which it differs from every other one
    (its last position when another continuation starts with all of it).

    >>> deciding_positions([(5, 1), (5, 2), (7,)])
    [1, 1, 0]
    """
    positions = []
    for c, tokens in enumerate(continuations):
        others = [o for k, o in enumerate(continuations) if k != c]
        unique = (
            p for p in range(len(tokens)) if all(o[: p + 1] != tokens[: p + 1] for o in others)
        )
        positions.append(next(unique, len(tokens) - 1))
    return positions


def readouts(
    model: Model,
    items: Sequence[MCQItem],
    mode: str = "continuation",
    prompt_template: str = QA_TEMPLATE,
    groups: Sequence[str] | None = None,
) -> Readouts:
    """``items`` as ``mcq_accuracy(model, items, mode, prompt_template=...)`` tokenises them,
    each candidate read before its deciding token (see the module docstring)."""
    groups = checked_groups(items, groups)
    contexts: dict[tuple[int, ...], int] = {}
    rows, tokens = [], []
    for request in mcq_requests(model, items, mode, prompt_template):
        conts = request.continuations
        at = deciding_positions(conts)
        prefixes = [tuple(request.context) + tuple(c[:p]) for c, p in zip(conts, at, strict=True)]
        rows.append([contexts.setdefault(prefix, len(contexts)) for prefix in prefixes])
        tokens.append([c[p] for c, p in zip(conts, at, strict=True)])
    answers = torch.tensor([item.answer for item in items])
    return Readouts(
        tuple(contexts), torch.tensor(rows), torch.tensor(tokens), answers, tuple(groups)
    )


def first_token_readouts(questions: QuestionSet) -> Readouts:
    """A question set read at its last context token through each choice's first token."""
    n, width = questions.choice_tokens.shape
    rows = torch.arange(n).unsqueeze(1).expand(n, width).clone()
    return Readouts(
        questions.contexts, rows, questions.choice_tokens, questions.answers, questions.groups
    )


def organism_readouts(org: Organism, domain: str = "hazardous") -> dict[str, Readouts]:
    """The organism's questions on ``domain`` as probes read them: ``"choice"`` (the four MCQ
    choices as scored) and ``"value"`` (every value of the question's attribute)."""
    groups = fact_entities(org, domain)
    mode, template = org.mcq_mode, org.qa_template
    return {
        "choice": readouts(org.model, org.mcq[domain], mode, template, groups),
        "value": readouts(org.model, value_items(org, domain), mode, template, groups),
    }


# ---------------------------------------------------------------------------------------------
# Folds and the probe
# ---------------------------------------------------------------------------------------------


def entity_folds(groups: Sequence[str], n_folds: int, seed: int = 0) -> np.ndarray:
    """The fold of each question: its group's, groups dealt round-robin to ``n_folds`` folds in
    an order drawn from ``seed``. A group never straddles two folds.

    >>> entity_folds(["a", "a", "b", "c"], n_folds=3, seed=0).tolist()
    [2, 2, 0, 1]
    """
    if not is_int(n_folds) or n_folds < 2:
        raise UnlearnInterpError(f"n_folds {n_folds!r} must be an integer of at least 2")
    names = sorted(set(groups))
    if len(names) < n_folds:
        raise UnlearnInterpError(
            f"{len(names)} groups cannot fill {n_folds} folds: use fewer folds or more entities"
        )
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[g]: i % n_folds for i, g in enumerate(order)}
    return np.array([fold_of[g] for g in groups])


@dataclasses.dataclass(frozen=True)
class Probe:
    """A fitted probe: ``score(h, c) = weight . ((h - mean) / std * u_c)``."""

    weight: Float[Tensor, " d_model"]
    mean: Float[Tensor, " d_model"]
    std: Float[Tensor, " d_model"]

    def scores(
        self,
        resid: Float[Tensor, "n_rows d_model"],
        rows: Int[Tensor, "n c"],
        vectors: Float[Tensor, "n c d_model"],
    ) -> Float[Tensor, "n c"]:
        """Each question's candidate scores."""
        return self.features(resid, rows, vectors) @ self.weight

    def features(
        self,
        resid: Float[Tensor, "n_rows d_model"],
        rows: Int[Tensor, "n c"],
        vectors: Float[Tensor, "n c d_model"],
    ) -> Float[Tensor, "n c d_model"]:
        return (resid[rows] - self.mean) / self.std * vectors


def fit_probe(
    resid: Float[Tensor, "n_rows d_model"],
    rows: Int[Tensor, "n c"],
    vectors: Float[Tensor, "n c d_model"],
    answers: Int[Tensor, " n"],
    l2: float = 1e-3,
) -> Probe:
    """The probe fitted on these questions (their readout rows, candidates' unembedding vectors
    and answers): standardised with the mean and std of the rows they read, then the penalised
    cross-entropy minimised by Newton's method in float64 (convex, so one optimum)."""
    resid = resid.double()
    used = resid[rows.unique()]
    std = used.std(dim=0, correction=0)
    std = torch.where(std > 1e-8 * std.max().clamp_min(1e-30), std, torch.ones_like(std))
    start = Probe(torch.zeros(resid.shape[1], dtype=torch.float64), used.mean(dim=0), std)
    features = start.features(resid, rows, vectors.double())
    return dataclasses.replace(start, weight=_newton(features, answers, l2))


def _objective(features: Tensor, answers: Tensor, l2: float, weight: Tensor) -> float:
    return float(
        torch.nn.functional.cross_entropy(features @ weight, answers) + l2 * weight @ weight
    )


def _newton(
    features: Float[Tensor, "n c d"], answers: Int[Tensor, " n"], l2: float, max_iter: int = 100
) -> Float[Tensor, " d"]:
    """argmin_w mean cross-entropy of softmax(features @ w) + l2 |w|^2: Newton steps with
    backtracking, from zero, until the Newton decrement is below 1e-12."""
    n, _, d = features.shape
    weight = torch.zeros(d, dtype=torch.float64)
    ridge = 2 * l2 * torch.eye(d, dtype=torch.float64)
    for _ in range(max_iter):
        p = torch.softmax(features @ weight, dim=1)  # [n, c]
        mean = torch.einsum("nc,ncd->nd", p, features)
        grad = (mean - features[torch.arange(n), answers]).mean(dim=0) + 2 * l2 * weight
        centred = (features - mean[:, None]) * p[..., None].sqrt()  # [n, c, d]
        flat = centred.reshape(-1, d)
        step = -torch.linalg.solve(flat.T @ flat / n + ridge, grad)
        decrement = -float(grad @ step)
        if decrement < 1e-12:
            break
        weight = _line_search(features, answers, l2, weight, step, decrement)
    return weight


def _line_search(
    features: Tensor, answers: Tensor, l2: float, weight: Tensor, step: Tensor, decrement: float
) -> Tensor:
    """The longest of step, step/2, step/4, ... that lowers the objective enough (Armijo)."""
    now, size = _objective(features, answers, l2, weight), 1.0
    for _ in range(40):
        if _objective(features, answers, l2, weight + size * step) <= now - 1e-4 * size * decrement:
            break
        size /= 2
    return weight + size * step


def strictly_correct(scores: Float[Tensor, "n c"], answers: Int[Tensor, " n"]) -> np.ndarray:
    """1 where the answer's score beats every other candidate's (a tie is wrong), else 0."""
    right = scores.gather(1, answers[:, None])
    others = scores.scatter(1, answers[:, None], -math.inf)
    return (right[:, 0] > others.max(dim=1).values).double().numpy()


# ---------------------------------------------------------------------------------------------
# Per variant and layer
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Setting:
    """One readout set and everything its probes share: folds, candidate vectors, settings."""

    readout: Readouts
    folds: np.ndarray
    vectors: Float[Tensor, "n c d_model"]
    l2: float
    seed: int


def _fold_probes(setting: _Setting, resid: Tensor, shuffle: int | None = None) -> list[Probe]:
    """One probe per fold, fitted on every other fold's questions (answers permuted across
    them by draw ``shuffle`` when given)."""
    r, probes = setting.readout, []
    for fold in range(int(setting.folds.max()) + 1):
        train = torch.from_numpy(np.flatnonzero(setting.folds != fold))
        answers = r.answers[train]
        if shuffle is not None:
            draw = np.random.default_rng([setting.seed, fold, shuffle]).permutation(len(train))
            answers = answers[torch.from_numpy(draw)]
        probes.append(fit_probe(resid, r.rows[train], setting.vectors[train], answers, setting.l2))
    return probes


def _fold_correct(setting: _Setting, probes: Sequence[Probe], resid: Tensor) -> np.ndarray:
    """Each question scored by its own fold's probe (fitted without its entity)."""
    r, correct = setting.readout, np.zeros(len(setting.readout))
    for fold, probe in enumerate(probes):
        test = torch.from_numpy(np.flatnonzero(setting.folds == fold))
        scores = probe.scores(resid.double(), r.rows[test], setting.vectors[test])
        correct[test.numpy()] = strictly_correct(scores, r.answers[test])
    return correct


def _per_item(own: np.ndarray, reference: np.ndarray, shuffled: list[np.ndarray]) -> pd.DataFrame:
    """The three probes' answers as :mod:`stats`' per-item table (the shuffles as seeds)."""
    parts = [("own", math.nan, own), ("reference", math.nan, reference)]
    parts += [("shuffled", float(k), correct) for k, correct in enumerate(shuffled)]
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "variant": probe,
                    "task": "probe",
                    "seed": seed,
                    "item": np.arange(len(c)),
                    "correct": c,
                }
            )
            for probe, seed, c in parts
        ],
        ignore_index=True,
    )


def _probe_rows(
    setting: _Setting, resid: Tensor, reference: Sequence[Probe], n_shuffles: int, n_boot: int
) -> pd.DataFrame:
    """Accuracy and interval of the own, reference and shuffled probes on one variant and layer."""
    own = _fold_correct(setting, _fold_probes(setting, resid), resid)
    shuffled = [
        _fold_correct(setting, _fold_probes(setting, resid, k), resid) for k in range(n_shuffles)
    ]
    per_item = _per_item(own, _fold_correct(setting, reference, resid), shuffled)
    table = stats.accuracy_intervals(per_item, n_boot=n_boot, seed=setting.seed)
    return table.rename(columns={"variant": "probe", "n_items": "n"})[
        ["probe", "accuracy", "ci_low", "ci_high", "n"]
    ]


def _readout_resid(
    model: Model,
    readout: Readouts,
    variant: Variant,
    layers: list[int],
    batch_size: int,
    store: ResidStore | None,
) -> Float[Tensor, "n_rows n_layers d_model"]:
    """The residual stream at every readout context's last token, after each of ``layers``."""
    n = len(readout.contexts)
    contexts = QuestionSet(
        readout.contexts,
        torch.zeros(n, 1, dtype=torch.long),
        torch.zeros(n, dtype=torch.long),
        tuple(map(str, range(n))),
    )
    resid = question_resid(model, contexts, variant, layers, batch_size, store)
    if not torch.isfinite(resid).all():
        raise UnlearnInterpError(f"variant {variant.name!r} gives non-finite activations")
    return resid


def _checked_inputs(
    variants: Sequence[Variant],
    questions: Mapping[str, QuestionSet | Readouts],
    reference: str,
    l2: float,
    n_shuffles: int,
) -> dict[str, Readouts]:
    names = [v.name for v in variants]
    if not names or len(set(names)) != len(names):
        raise UnlearnInterpError(f"give at least one variant, each name once; got {names}")
    if reference not in names:
        raise UnlearnInterpError(f"reference variant {reference!r} is not among {names}")
    if not questions:
        raise UnlearnInterpError("give at least one question set to probe")
    if not (isinstance(l2, int | float) and math.isfinite(l2) and l2 > 0):
        raise UnlearnInterpError(
            f"l2 {l2!r} must be a finite number > 0: unpenalised weights grow without bound "
            "on questions a probe separates"
        )
    if not is_int(n_shuffles) or n_shuffles < 1:
        raise UnlearnInterpError(f"n_shuffles {n_shuffles!r} must be a positive integer")
    return {
        label: q if isinstance(q, Readouts) else first_token_readouts(q)
        for label, q in questions.items()
    }


def layer_probes(
    model: Model,
    variants: Sequence[Variant],
    questions: Mapping[str, QuestionSet | Readouts],
    *,
    reference: str = "base",
    layers: Sequence[int] | None = None,
    n_folds: int = 5,
    seed: int = 0,
    l2: float = 1e-3,
    n_shuffles: int = 5,
    n_boot: int = 1000,
    batch_size: int = 32,
    progress: bool = True,
    store: ResidStore | None = None,
) -> pd.DataFrame:
    """Own, reference and shuffled-label probe accuracy per variant, question set and layer.

    ``questions`` maps a label ("choice", "value", ...) to a :class:`Readouts` (from
    :func:`readouts` / :func:`organism_readouts`) or a :class:`QuestionSet` (read through first
    tokens). Folds by group from ``seed`` (:func:`entity_folds`); activations are computed once
    per variant and set (and shared through ``store`` with other analyses). Columns: ``variant, label, probe, layer, accuracy, ci_low, ci_high, n,
    chance``.
    """
    sets = _checked_inputs(variants, questions, reference, l2, n_shuffles)
    layers = list(range(models.n_layers(model))) if layers is None else check_layers(model, layers)
    bar = tqdm(total=len(variants) * len(sets) * len(layers), disable=not progress, desc="probes")
    frames = []
    for label, readout in sets.items():
        n, width = readout.tokens.shape
        vectors = unembedding_vectors(model, readout.tokens.flatten()).double().cpu()
        setting = _Setting(
            readout,
            entity_folds(readout.groups, n_folds, seed),
            vectors.reshape(n, width, -1),
            float(l2),
            seed,
        )
        resid = {
            v.name: _readout_resid(model, readout, v, layers, batch_size, store) for v in variants
        }
        for j, layer in enumerate(layers):
            base_probes = _fold_probes(setting, resid[reference][:, j])
            for variant in variants:
                rows = _probe_rows(
                    setting, resid[variant.name][:, j], base_probes, n_shuffles, n_boot
                )
                frames.append(
                    rows.assign(
                        variant=variant.name, label=label, layer=layer, chance=readout.chance()
                    )
                )
                bar.update()
    bar.close()
    return pd.concat(frames, ignore_index=True)[list(COLUMNS)]
