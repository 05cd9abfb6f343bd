"""Options several ``unlearn-interp`` commands share, declared once: the model and where it runs,
the run directory, the corpora, RMUConfig's fields (one flag per field, generated), the executor a
sweep runs on, and :func:`use_job`, which binds a command to its pipeline job.

:mod:`unlearn_interp.cli` declares each command with these helpers; the library's constants
(choices) come in through the ``jobs`` module each helper is given, so building the parser is the
first time the library loads.

    >>> parser = argparse.ArgumentParser()
    >>> add_executor_options(parser)
    >>> parser.parse_args(["--executor", "ray", "--workers", "2"]).workers
    2
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import inspect
import types
import typing
from argparse import SUPPRESS
from collections.abc import Callable, Sequence
from typing import Any

from unlearn_interp.executors import EXECUTORS

RMU_DEST = "rmu."  # namespace prefix of the options generated from RMUConfig's fields
MODEL_HELP = "TransformerLens name, local HF checkpoint directory or fetched model asset"

# Help for each RMUConfig field (a field's ``metadata["help"]`` takes precedence).
PER_TOPIC = "one value, or one per topic"
RMU_HELP = {
    "layer": "steer the residual stream after this block (reference: 7 = input of block 8)",
    "update_layers": "blocks whose MLP W_out trains (default: layer-2..layer)",
    "steering_coef": f"c, the norm of the forget target c*u; {PER_TOPIC}",
    "alpha": f"weight of the retain term; {PER_TOPIC}",
    "lr": "AdamW learning rate",
    "adam_eps": "AdamW eps (the reference's transformers.AdamW default; torch's is 1e-8)",
    "batch_size": "documents per forget batch and per retain batch",
    "steps": "optimiser steps in total, topics alternating",
    "max_len": f"forget tokens per document; {PER_TOPIC}",
    "adaptive_beta": "Adaptive RMU: c = beta * frozen forget-activation norm (replaces c)",
    "control_vector": "how the control vectors u are drawn",
    "mask_padding": "exclude padding from the loss (--no-mask-padding: the reference's loss)",
    "frozen_forget_every": "frozen-model forget diagnostics every k batches (1: every step)",
    "seed": "seeds the control vectors",
}


def add_model_options(parser, jobs: types.ModuleType, flag="--model", help=MODEL_HELP) -> None:
    """The model to load and how: ``--model`` (or ``flag``), ``--dtype``, ``--device``."""
    group = parser.add_argument_group("model")
    group.add_argument(flag, required=True, help=help)
    add_placement_options(group, jobs)


def add_placement_options(group: argparse._ActionsContainer, jobs: types.ModuleType) -> None:
    """Where and in what precision the model runs: ``--dtype``, ``--device``."""
    group.add_argument("--dtype", choices=tuple(jobs.DTYPES), help="weights' dtype")
    group.add_argument(
        "--device", help="torch device (default: cuda when available; the organism: the CPU)"
    )


def add_out_option(parser: argparse.ArgumentParser, **kwargs) -> None:
    parser.add_argument("--out", required=True, metavar="RUN_DIR", **kwargs)


def add_force_option(parser: argparse.ArgumentParser, what: str = "every step") -> None:
    parser.add_argument("--force", action="store_true", help=f"recompute {what}")


def add_corpus_options(parser: argparse.ArgumentParser, required: bool) -> None:
    """The corpora RMU trains on: ``--forget``, ``--retain``, ``--min-len``."""
    group = parser.add_argument_group("corpora")
    group.add_argument(
        "--forget",
        required=required,
        nargs="+",
        metavar="FILE",
        help="one corpus per topic: .jsonl (a 'text' field), .txt, .parquet or a datasets dir",
    )
    group.add_argument(
        "--retain",
        required=required,
        nargs="+",
        metavar="FILE",
        help="one retain corpus per --forget file, or one shared by all topics",
    )
    group.add_argument(
        "--min-len",
        type=int,
        metavar="CHARS",
        help="drop documents of at most this many characters (the reference uses 50)",
    )


def add_rmu_options(parser, jobs: types.ModuleType, layer_required: bool, prefixed=()) -> None:
    """One option per RMUConfig field, ``--<field>`` (``--rmu-<field>`` for the fields in
    ``prefixed``, whose plain spelling the command uses for something else). Unset options
    stay out of the config, which then keeps its own defaults."""
    group = parser.add_argument_group(
        "RMU", "RMUConfig's fields; unset ones keep its defaults (the released Zephyr-7B RMU's)"
    )
    hints = typing.get_type_hints(jobs.RMUConfig)
    for field in dataclasses.fields(jobs.RMUConfig):
        name = field.name.replace("_", "-")
        flag = f"--rmu-{name}" if field.name in prefixed else f"--{name}"
        options = _rmu_field_options(field, hints[field.name], jobs.RMU_CHOICES)
        if field.name == "layer":
            options["required"] = layer_required
        group.add_argument(flag, dest=RMU_DEST + field.name, default=None, **options)


def _rmu_field_options(
    field: dataclasses.Field, hint: Any, choices: dict[str, Sequence[str]]
) -> dict[str, Any]:
    """``add_argument`` keywords for one RMUConfig field, from its type and default: a bool is
    ``--x/--no-x``, a sequence takes several values, a per-topic field one or several."""
    help_ = field.metadata.get("help", RMU_HELP.get(field.name, ""))
    if field.default not in (dataclasses.MISSING, None):
        help_ += f" (default: {field.default})"
    alternatives = _union_members(hint)
    if bool in alternatives:
        return {"action": argparse.BooleanOptionalAction, "help": help_}
    sequences = [a for a in alternatives if typing.get_origin(a) is collections.abc.Sequence]
    element = _union_members(typing.get_args(sequences[0])[0]) if sequences else alternatives
    kind = float if float in element else int if int in element else str
    options: dict[str, Any] = {"type": kind, "help": help_}
    if field.name in choices:
        options["choices"] = tuple(choices[field.name])
    elif kind is not str:
        options["metavar"] = "N" if kind is int else "X"
    if sequences:
        scalar_too = len(sequences) < len([a for a in alternatives if a is not type(None)])
        options.update(nargs="+", action=_OneOrMany if scalar_too else "store")
    return options


def _union_members(hint: Any) -> list[Any]:
    """The alternatives of a (nested) union type; ``[hint]`` for any other type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(hint) for member in _union_members(arg)]
    return [hint]


class _OneOrMany(argparse.Action):
    """Stores one value as itself and several as a list (RMUConfig's per-topic fields)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values[0] if len(values) == 1 else values)


def add_organism_options(parser: argparse.ArgumentParser, jobs: types.ModuleType) -> None:
    parser.add_argument("--size", choices=jobs.ORGANISM_SIZES, help="organism size")
    parser.add_argument("--seed", type=int, help="organism seed")


def use_job(parser: argparse.ArgumentParser, job: Callable[..., str]) -> None:
    """``parser``'s command calls ``job``; options left out take the job's defaults, shown in
    the help."""
    params = inspect.signature(job).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    parser.set_defaults(job=job, **defaults)
    for action in parser._actions:  # flags (nargs 0) and unset-means-absent options excepted
        if action.nargs != 0 and action.default not in (None, (), SUPPRESS):
            action.help = (
                f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"
            )


def positions(text: str) -> str | int:
    """``--positions``: a token index as an int, else the text (the job checks it)."""
    try:
        return int(text)
    except ValueError:
        return text


def add_selection_options(parser: argparse.ArgumentParser, jobs: types.ModuleType) -> None:
    """How ``direction`` filters tokens and picks a layer among the candidates."""
    group = parser.add_argument_group("selection")
    group.add_argument(
        "--outlier-z",
        type=float,
        help="drop tokens whose difference-norm z-score exceeds this (for --positions all)",
    )
    group.add_argument(
        "--min-raw-norm", type=float, help="selection threshold with --all-layers and no --layer"
    )
    group.add_argument(
        "--min-cos-control",
        type=float,
        help="selection threshold on |cos| with the run's control vectors",
    )
    group.add_argument(
        "--prefer",
        choices=jobs.DIRECTION_PREFERENCES,
        help="score that picks among the layers passing the thresholds (--all-layers, no --layer)",
    )


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """Where a sweep's points run: ``--executor``, ``--workers``, ``--ray-address`` (the job's
    ``executor``, ``workers`` and ``ray_address`` parameters, for ``executors.make_executor``)."""
    group = parser.add_argument_group(
        "executor",
        'where the points run (Ray: pip install -e ".[scale]"); a sweep resumes on either executor',
    )
    group.add_argument("--executor", choices=EXECUTORS, help="in this process, or on Ray")
    group.add_argument("--workers", type=int, metavar="N", help="Ray worker processes (default: 2)")
    group.add_argument(
        "--ray-address", metavar="ADDR", help="a running Ray cluster (default: start a local one)"
    )


__all__ = [
    "MODEL_HELP",
    "RMU_DEST",
    "RMU_HELP",
    "add_corpus_options",
    "add_executor_options",
    "add_force_option",
    "add_model_options",
    "add_organism_options",
    "add_out_option",
    "add_placement_options",
    "add_rmu_options",
    "add_selection_options",
    "positions",
    "use_job",
]
