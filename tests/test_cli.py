"""The command line: options generated from RMUConfig, declared once, handed to pipeline jobs.

Fast: no test here trains or loads a model; ``models.load_model``, ``rmu.train_rmu`` and
``audit`` are replaced where a command would reach them. The commands end to end are tested
beside their library modules (test_rmu, test_directions, test_evaluation, test_pipeline,
test_audit, test_reliability).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import torch

from unlearn_interp import cli, cli_options, directions, evaluation, models, organism, rmu, sources
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline import jobs
from unlearn_interp.pipeline.rundir import with_dtype

PREFIX = "unlearn-interp: error:"
MODEL_COMMANDS = ("audit", "unlearn", "direction", "evaluate", "demo", "figures")
NOT_OPTIONS = ("progress", "rmu_settings")  # -q, and the RMU options collected


def subparsers() -> dict:
    """Each subcommand's parser, by name."""
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return dict(action.choices)


def flags(command: str) -> set[str]:
    return {flag for a in subparsers()[command]._actions for flag in a.option_strings}


def choices(command: str, flag: str) -> tuple:
    (action,) = [a for a in subparsers()[command]._actions if flag in a.option_strings]
    return tuple(action.choices)


@pytest.fixture
def files(tmp_path, monkeypatch):
    """An MCQ file, prompts, corpora and an RMU config JSON in the working directory."""
    row = {"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 1}
    (tmp_path / "mcq.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "prompts.txt").write_text("one prompt\nanother prompt\n")
    (tmp_path / "forget.txt").write_text("a forget document\n")
    (tmp_path / "retain.txt").write_text("a retain document\n")
    (tmp_path / "rmu.json").write_text(json.dumps({"layer": 1, "steps": 7, "alpha": 3.0}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "0")  # undone after the test; -q sets it
    return tmp_path


AUDIT = ["audit", "--base", "ckpt", "--unlearned", "u", "--forget-mcq", "mcq.jsonl",
         "--retain-mcq", "mcq.jsonl", "--out", "out"]  # fmt: skip
UNLEARN = ["unlearn", "--model", "ckpt", "--out", "out"]
CORPORA = ["--forget", "forget.txt", "--retain", "retain.txt"]


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    code = cli.main(["-q", *argv])
    return code, capsys.readouterr().err.splitlines()


# --- options generated from RMUConfig -----------------------------------------------------------


def test_every_rmu_config_field_is_an_option_of_unlearn():
    dests = {a.dest for a in subparsers()["unlearn"]._actions}
    fields = {f.name for f in dataclasses.fields(rmu.RMUConfig)}
    assert {cli.RMU_DEST + name for name in fields} <= dests
    assert fields <= set(cli_options.RMU_HELP)  # each has its help line


def test_existing_rmu_spellings_parse_into_the_config_they_name():
    argv = ["unlearn", "--model", "m", "--forget", "f", "--retain", "r", "--out", "o",
            "--layer", "3", "--update-layers", "2", "3", "--steering-coef", "8", "9",
            "--alpha", "5", "--lr", "1e-3", "--adam-eps", "1e-8", "--batch-size", "2",
            "--steps", "4", "--max-len", "24", "--adaptive-beta", "5",
            "--control-vector", "gaussian", "--no-mask-padding", "--seed", "7"]  # fmt: skip
    args = cli.build_parser().parse_args(argv)
    settings = cli.job_arguments(args.job, args)["rmu_settings"]
    cfg = jobs.rmu_config(settings)
    assert cfg == rmu.RMUConfig(
        layer=3, update_layers=(2, 3), steering_coef=(8.0, 9.0), alpha=5.0, lr=1e-3,
        adam_eps=1e-8, batch_size=2, steps=4, max_len=24, adaptive_beta=5.0,
        control_vector="gaussian", mask_padding=False, seed=7,
    )  # fmt: skip
    assert settings["alpha"] == 5.0 and settings["max_len"] == 24  # one value: a scalar


def test_unset_rmu_options_leave_the_config_defaults():
    argv = ["unlearn", "--model", "m", "--forget", "f", "--retain", "r", "--out", "o"]
    args = cli.build_parser().parse_args([*argv, "--layer", "2"])
    assert cli.job_arguments(args.job, args)["rmu_settings"] == {"layer": 2}


def test_rmu_option_choices_come_from_rmu():
    assert choices("unlearn", "--control-vector") == tuple(rmu.CONTROL_VECTOR_KINDS)


# --- shared options and library constants -------------------------------------------------------


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_command_that_loads_a_model_takes_dtype_and_device(command):
    assert {"--dtype", "--device"} <= flags(command)
    assert choices(command, "--dtype") == tuple(jobs.DTYPES)


def test_choices_are_the_library_constants():
    assert choices("evaluate", "--mode") == choices("audit", "--mode") == evaluation.MODES
    assert choices("direction", "--method") == directions.METHODS
    assert choices("direction", "--prefer") == directions.PREFERENCES
    assert choices("demo", "--size") == choices("figures", "--size") == tuple(organism.SIZES)
    assert set(jobs.ASSET_NAMES) == set(sources.ASSETS)


@pytest.mark.parametrize("command", list(subparsers()))
def test_each_command_gives_its_job_every_parameter_and_the_job_defaults(command):
    """The options are the job's parameters: nothing restated, nothing missing."""
    parser = subparsers()[command]
    job = parser.get_default("job")
    required = {
        "audit": AUDIT[1:],
        "unlearn": ["--model", "m", "--forget", "f", "--retain", "r", "--layer", "1", "--out", "o"],
        "direction": ["--model", "m", "--run", "r", "--prompts", "p", "--out", "o"],
        "evaluate": ["--model", "m", "--mcq", "q"],
        "demo": ["--out", "o"],
        "figures": ["--out", "o"],
        "ledger": ["--run", "r"],
    }.get(command, [])
    args = cli.build_parser().parse_args([command, *required])
    given = cli.job_arguments(job, args)
    for name, param in inspect.signature(job).parameters.items():
        given_on_line = "--" + name.replace("_", "-") in required
        if param.default is not param.empty and not given_on_line and name not in NOT_OPTIONS:
            assert given[name] == param.default, (command, name)


def test_cli_imports_only_the_pipeline_errors_and_the_version():
    tree = ast.parse(Path(cli.__file__).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    ours = {name for name in imported if name.startswith("unlearn_interp")}
    assert ours == {
        "unlearn_interp",
        "unlearn_interp.cli_options",
        "unlearn_interp.errors",
        "unlearn_interp.pipeline",
    }


# --- jobs reached through the command line -------------------------------------------------------


class Stop(UnlearnInterpError):
    pass


@pytest.fixture
def load_model_calls(monkeypatch):
    """``models.load_model``'s keyword arguments, then one error sentence instead of a model."""
    calls = []

    def fake(name, **kwargs):
        calls.append(kwargs)
        raise Stop(f"would load {name}")

    monkeypatch.setattr(models, "load_model", fake)
    return calls


@pytest.mark.parametrize(
    "argv",
    [
        ["unlearn", "--model", "ckpt", *CORPORA, "--layer", "1", "--out", "out"],
        ["direction", "--model", "ckpt", "--run", "run", "--prompts", "prompts.txt", "--out", "o"],
        ["evaluate", "--model", "ckpt", "--mcq", "mcq.jsonl"],
    ],
    ids=["unlearn", "direction", "evaluate"],
)
def test_dtype_and_device_reach_the_model_loader(argv, files, load_model_calls, capsys):
    code, err = run_cli([*argv, "--dtype", "bfloat16", "--device", "cpu"], capsys)
    assert code == 2 and err == [f"{PREFIX} would load ckpt"]
    only = {"first_blocks": 2} if argv[0] == "unlearn" else {}  # RMU at layer 1: blocks 0..1
    assert load_model_calls == [{"device": "cpu", "dtype": torch.bfloat16, **only}]
    assert run_cli(argv, capsys)[0] == 2
    assert load_model_calls[-1]["dtype"] == torch.float32  # the default, as before


@pytest.mark.parametrize(
    ("argv", "job"),
    [
        (["demo", "--out", "out"], "run_demo"),
        (["demo", "--model", "smollm2-135m", "--out", "out"], "run_study"),
        (["figures", "--out", "figs"], "make_figures"),
    ],
    ids=["demo", "model-demo", "figures"],
)
def test_demo_and_figures_pass_dtype_and_device_on(argv, job, files, monkeypatch, capsys):
    calls = []

    def fake(out, **kwargs):
        calls.append(kwargs)
        raise Stop(f"would run {job}")

    monkeypatch.setattr(jobs, job, fake)
    code, err = run_cli([*argv, "--dtype", "bfloat16", "--device", "cpu"], capsys)
    assert code == 2 and err == [f"{PREFIX} would run {job}"]
    assert calls[0]["dtype"] == torch.bfloat16 and calls[0]["device"] == "cpu"
    run_cli(argv, capsys)
    assert calls[1]["dtype"] == torch.float32 and calls[1]["device"] is None


def test_a_dtype_other_than_float32_is_part_of_a_runs_settings():
    settings = {"job": "demo", "seed": 0}
    assert with_dtype(settings, None) == settings == with_dtype(settings, torch.float32)
    assert with_dtype(settings, torch.bfloat16) == {**settings, "dtype": "bfloat16"}


@pytest.fixture
def rmu_calls(monkeypatch):
    """``rmu.train_rmu``'s corpora and config; it stops there instead of training."""
    calls = []

    def fake(model, forget, retain, cfg, **kwargs):
        calls.append({"forget": forget, "retain": retain, "cfg": cfg})
        raise Stop("stopped before training")

    monkeypatch.setattr(jobs, "load_model", lambda *args, **kwargs: "a model")
    monkeypatch.setattr(rmu, "train_rmu", fake)
    return calls


def test_unlearn_trains_rmu_from_options_alone(files, rmu_calls, capsys):
    argv = [*UNLEARN, *CORPORA, "--layer", "1", "--steering-coef", "9", "--seed", "3"]
    code, err = run_cli(argv, capsys)
    assert code == 2 and err == [f"{PREFIX} stopped before training"]
    (call,) = rmu_calls
    assert call["cfg"] == rmu.RMUConfig(layer=1, steering_coef=9.0, seed=3)
    assert call["forget"] == [["a forget document"]]


def test_unlearn_options_override_the_rmu_config_file(files, rmu_calls, capsys):
    argv = [*UNLEARN, *CORPORA, "--rmu-config", "rmu.json", "--steps", "2"]
    assert run_cli(argv, capsys)[0] == 2
    assert rmu_calls[0]["cfg"] == rmu.RMUConfig(layer=1, steps=2, alpha=3.0)


def test_unlearn_shares_one_retain_corpus_across_topics(files, rmu_calls, capsys):
    argv = [*UNLEARN, "--forget", "forget.txt", "forget.txt", "--retain", "retain.txt",
            "--layer", "1"]  # fmt: skip
    assert run_cli(argv, capsys)[0] == 2
    assert rmu_calls[0]["retain"] == [["a retain document"]] * 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([*CORPORA], "RMUConfig field 'layer' is missing"),
        ([*CORPORA, "--rmu-config", "rmu.json", "--steps", "0"], "rmu.json: RMUConfig.steps must"),
    ],
)
def test_unlearn_bad_settings_are_one_sentence_and_exit_2(files, rmu_calls, capsys, extra, message):
    code, err = run_cli([*UNLEARN, *extra], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(PREFIX) and message in err[0]
    assert rmu_calls == []


def test_audit_hands_its_options_to_the_audit(files, monkeypatch, capsys):
    calls = []

    def fake(out, **kwargs):
        calls.append(kwargs)
        raise Stop("stopped before the audit")

    monkeypatch.setattr(jobs, "audit", fake)
    argv = [*AUDIT, "--layer", "3", "--skip", "ledger", "depth", "--mode", "continuation"]
    assert run_cli([*argv, "--dtype", "bfloat16"], capsys)[0] == 2
    (call,) = calls
    assert call["layer"] == 3 and call["skip"] == ["ledger", "depth"]
    assert call["mode"] == "continuation" and call["dtype"] == torch.bfloat16
    assert call["forget_mcq"] == ["mcq.jsonl"] and call["unlearned"] == "u"


def test_positions_is_checked_before_the_model_loads(files, load_model_calls, capsys):
    argv = ["direction", "--model", "ckpt", "--run", "run", "--prompts", "prompts.txt"]
    code, err = run_cli([*argv, "--positions", "middle", "--out", "o"], capsys)
    assert code == 2 and "positions 'middle' is not 'last', 'all'" in err[0]
    assert load_model_calls == []


def test_quiet_is_read_before_the_library_loads():
    assert cli._wants_quiet(["-q", "unlearn", "--model", "m"])
    assert cli._wants_quiet(["--debug", "--quiet", "info"])
    assert not cli._wants_quiet(["unlearn", "--model", "m"])


def test_info_prints_versions(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "cuda available:" in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
