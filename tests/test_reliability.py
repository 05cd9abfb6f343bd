"""Reliability: bad input, interrupted runs, hook hygiene, determinism and safe loading.

* Bad input: a table of broken files, paths and options run through the ``unlearn-interp``
  command line: each exits with status 2 and exactly one line ``unlearn-interp: error: ...``
  naming the file, row or field, without a traceback (``--debug`` shows it). Library-level
  cases other test files do not cover yet are here too (prompts longer than the context, a
  direction from another model, a malformed RMU config, a device the machine lacks).
* Interrupted runs: ``unlearn`` and a sweep are killed with SIGKILL in a subprocess; nothing
  half-written is left and the next run completes (the sweep resumes). The demo kill/resume/
  --force test is slow (the RMU step of the test organism takes minutes on 2 cores).
* Hook hygiene: every public function that adds hooks or swaps weights is made to raise in the
  middle (a hook that raises, or a callee patched to raise); the model then has no hook left
  and bit-identical weights and ``requires_grad`` flags.
* Determinism: same seed and inputs give byte-identical weights, direction and metrics.
* Safe loading: nothing is unpickled, ``trust_remote_code`` stays off unless asked for, and a
  local path never opens a socket.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CORPUS, save_hf_checkpoint
from transformer_lens.hook_points import HookPoint

from unlearn_interp import (
    analysis,
    artifacts,
    cli,
    data,
    directions,
    evaluation,
    interventions,
    models,
    pipeline,
    rmu,
)
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.data import MCQItem
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import Variant
from unlearn_interp.organism.pretraining import torch_threads
from unlearn_interp.pipeline.step import Run, run_steps
from unlearn_interp.pipeline.steps.accuracy import Accuracy
from unlearn_interp.pipeline.steps.directions import Directions
from unlearn_interp.pipeline.steps.generations import Generations
from unlearn_interp.pipeline.steps.profile import LayerProfile
from unlearn_interp.pipeline.steps.unlearn import Unlearn
from unlearn_interp.pipeline.subject import Subject, Task
from unlearn_interp.pipeline.variants import RunVariants

PACKAGE = Path(__file__).resolve().parents[1] / "unlearn_interp"
PREFIX = "unlearn-interp: error:"
W_OUT_1 = models.mlp_out_param(1)
ITEMS = [
    MCQItem(f"Question {i}: the quick brown fox?", ["a", "b", "c", "d"], i % 4, subject="biology")
    for i in range(4)
]
PROMPTS = ["The quick brown fox jumps", "Residual streams carry", "A multiple choice"]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def run_cli(argv, monkeypatch, capsys) -> tuple[int, str, str]:
    """``cli.main(argv)`` in this process; -q's TQDM_DISABLE is undone after the test."""
    monkeypatch.setenv("TQDM_DISABLE", os.environ.get("TQDM_DISABLE", "0"))
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(PREFIX)]


def cli_env(**extra: str) -> dict[str, str]:
    """Environment of a CLI subprocess: one thread; no offline flag (local paths need none)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    env.pop("HF_HUB_OFFLINE", None)
    return env


def cli_command() -> list[str]:
    return [sys.executable, "-m", "unlearn_interp.cli"]


def hooks_left(model) -> list[str]:
    """Every forward/backward hook still registered anywhere on ``model`` (or globally)."""
    left = []
    for name, module in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            if getattr(module, kind):
                left.append(f"{name}.{kind}")
        if isinstance(module, HookPoint) and (module.fwd_hooks or module.bwd_hooks):
            left.append(f"{name} (TransformerLens handles)")
    from torch.nn.modules import module as torch_module

    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(torch_module, kind):
            left.append(kind)
    return left


def state(model) -> dict[str, tuple[torch.Tensor, bool]]:
    """Every parameter's bytes and requires_grad flag."""
    return {
        name: (p.detach().cpu().contiguous().view(torch.uint8).clone(), p.requires_grad)
        for name, p in model.named_parameters()
    }


def assert_same_state(model, before) -> None:
    after = state(model)
    changed = [n for n in before if not torch.equal(before[n][0], after[n][0])]
    flags = [n for n in before if before[n][1] != after[n][1]]
    assert changed == [] and flags == []


# ---------------------------------------------------------------------------------------------
# Bad input through the command line: one table, one assertion per row
# ---------------------------------------------------------------------------------------------


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, tokenizer):
    """A tiny GPT-2 checkpoint (3 blocks, d_model 32, 128-token context), a run directory
    that fits it, and one broken file or directory per row of the bad-input table."""
    root = tmp_path_factory.mktemp("reliability")
    save_hf_checkpoint("gpt2", root / "ckpt", tokenizer)
    (root / "noconfig").mkdir()
    good = {"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 1, "subject": "biology"}
    _jsonl(root / "mcq.jsonl", [{**good, "question": f"Q{i}?", "answer": i % 4} for i in range(4)])
    _jsonl(root / "three.jsonl", [good, {**good, "choices": ["a", "b", "c"]}])
    _jsonl(root / "ans4.jsonl", [good, {**good, "answer": 4}])
    _jsonl(root / "ansE.jsonl", [good, {**good, "answer": "E"}])
    _jsonl(root / "noq.jsonl", [good, {k: v for k, v in good.items() if k != "question"}])
    _jsonl(root / "longq.jsonl", [{**good, "question": "the quick brown fox " * 100}])
    (root / "mcq.xml").write_text("<questions/>")
    _jsonl(root / "forget.jsonl", [{"text": f"{t} {i}"} for i, t in enumerate(CORPUS)])
    (root / "retain.txt").write_text("\n".join(CORPUS) + "\n")
    (root / "malformed.jsonl").write_text('{"text": "a fine document"}\n{"text": oops}\n')
    (root / "empty.txt").write_text("")
    _jsonl(root / "blank.jsonl", [{"text": ""}, {"text": "   "}])
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    _jsonl(root / "blank_prompts.jsonl", [{"prompt": " "}, {"text": ""}])
    (root / "long_prompts.txt").write_text("the quick brown fox " * 200 + "\nthe lazy dog\n")
    (root / "afile").write_text("not a directory")
    (root / "broken.json").write_text('{"layer": 1,')
    (root / "bogus.json").write_text('{"layer": 1, "bogus": 3}')
    (root / "nolayer.json").write_text('{"steps": 3}')
    # run directories: one that fits, one from a wider model, one with a NaN, one empty
    shape = (128, 32)  # blocks.1.mlp.W_out: [d_mlp, d_model]
    models.save_weights({W_OUT_1: torch.randn(shape)}, root / "run/unlearned_weights.safetensors")
    models.save_weights(
        {"control_vectors": torch.rand(1, 32)}, root / "run/control_vectors.safetensors"
    )
    models.save_weights(
        {W_OUT_1: torch.randn(256, 64)}, root / "other/unlearned_weights.safetensors"
    )
    nan = torch.randn(shape)
    nan[3, 4] = float("nan")
    models.save_weights({W_OUT_1: nan}, root / "nanrun/unlearned_weights.safetensors", None)
    (root / "emptyrun").mkdir()
    models.save_weights(
        {W_OUT_1: torch.randn(shape)}, root / "corruptrun/unlearned_weights.safetensors"
    )
    (root / "corruptrun/config.json").write_text("{not json")
    directions.Direction(
        vector=torch.randn(16), raw_norm=1.0, layer=1, positions="last", n_prompts=3,
        method="diff_in_means", model_name="a 16-wide model",
    ).save(root / "wrong_width")  # fmt: skip
    return root


UNLEARN = ["unlearn", "--model", "ckpt", "--forget", "forget.jsonl", "--retain", "retain.txt",
           "--layer", "1", "--steps", "1", "--batch-size", "2", "--max-len", "16",
           "--device", "cpu", "--out", "out_run"]  # fmt: skip
EVALUATE = ["evaluate", "--model", "ckpt", "--mcq", "mcq.jsonl", "--device", "cpu"]
DIRECTION = ["direction", "--model", "ckpt", "--run", "run", "--prompts", "prompts.txt",
             "--layer", "1", "--device", "cpu", "--out", "out_direction"]  # fmt: skip
AUDIT = ["audit", "--base", "ckpt", "--unlearned", "run", "--forget-mcq", "mcq.jsonl",
         "--retain-mcq", "mcq.jsonl", "--out", "out_pipeline"]  # fmt: skip


def _with(base: list[str], **changes: str | list[str] | None) -> list[str]:
    """``base`` with options replaced (``--x`` given as ``x``), added, or removed (None)."""
    argv = list(base)
    for key, value in changes.items():
        flag = "--" + key.replace("_", "-")
        if flag in argv:
            i = argv.index(flag)
            end = i + 1
            while end < len(argv) and not argv[end].startswith("--"):
                end += 1
            del argv[i:end]
        if value is not None:
            argv += [flag, *([value] if isinstance(value, str) else value)]
    return argv


# (command line, what the one error line must contain). Paths are relative to `files`.
BAD_INPUT = {
    "missing checkpoint": (_with(UNLEARN, model="./nowhere/ckpt"), "nowhere/ckpt does not exist"),
    "directory without config.json": (
        _with(EVALUATE, model="noconfig"), "noconfig has no config.json"),
    "unknown model name offline": (
        _with(EVALUATE, model="no-such-model-xyz"),
        "'no-such-model-xyz' is neither a local checkpoint directory nor a TransformerLens model"),
    "missing MCQ file": (_with(EVALUATE, mcq="nope.jsonl"), "nope.jsonl does not exist"),
    "MCQ file of unknown format": (_with(EVALUATE, mcq="mcq.xml"), "mcq.xml has an unsupported extension"),
    "malformed JSONL line": (
        _with(UNLEARN, forget="malformed.jsonl"), "malformed.jsonl line 2 is not valid JSON"),
    "MCQ row with 3 choices": (
        _with(EVALUATE, mcq="three.jsonl"), "three.jsonl line 2: field 'choices' has 3 entries"),
    "MCQ answer 4": (_with(EVALUATE, mcq="ans4.jsonl"), "ans4.jsonl line 2: field 'answer' is 4"),
    "MCQ answer E": (_with(EVALUATE, mcq="ansE.jsonl"), "ansE.jsonl line 2: field 'answer' is 'E'"),
    "MCQ question missing": (
        _with(EVALUATE, mcq="noq.jsonl"), "noq.jsonl line 2: field 'question' is missing"),
    "empty corpus": (_with(UNLEARN, forget="empty.txt"), "empty.txt is empty"),
    "corpus of empty strings": (
        _with(UNLEARN, retain="blank.jsonl"), "blank.jsonl contains no non-blank documents"),
    "non-UTF-8 text file": (
        _with(UNLEARN, forget="latin1.txt"), "latin1.txt line 1 is not UTF-8 text"),
    "prompts file of blank prompts": (
        _with(DIRECTION, prompts="blank_prompts.jsonl"), "blank_prompts.jsonl contains no non-blank prompts"),
    "layer = n_layers": (_with(UNLEARN, layer="3"), "layer 3 is out of range: the model has 3 blocks"),
    "negative layer": (_with(UNLEARN, layer="-1"), "RMUConfig.layer must be >= 0, got -1"),
    "direction layer too deep": (_with(DIRECTION, layer="7"), "layer 7 is out of range"),
    "update_layers above layer": (
        _with(UNLEARN, update_layers="2"), "RMUConfig.update_layers contains 2, above layer 1"),
    "negative alpha": (_with(UNLEARN, alpha="-1"), "RMUConfig.alpha must be >= 0.0, got -1.0"),
    "zero steps": (_with(UNLEARN, steps="0"), "RMUConfig.steps must be >= 1, got 0"),
    "zero batch size": (_with(EVALUATE, batch_size="0"), "batch_size must be a positive integer"),
    "direction of the wrong d_model": (
        _with(EVALUATE, ablate="wrong_width"), "wrong_width: the direction has d_model 16 but"),
    "zero-norm direction (unlearned = base)": (
        _with(DIRECTION, run=None, unlearned="ckpt"),
        "the unlearned and base variants give the same activations at layer 1"),
    "run directory from another model (evaluate)": (
        _with(EVALUATE, run="other"), f"{W_OUT_1} has shape (256, 64) but the model's is (128, 32)"),
    "run directory from another model (direction)": (
        _with(DIRECTION, run="other"), f"{W_OUT_1} has shape (256, 64) but the model's is (128, 32)"),
    "directory that is not a run": (
        _with(EVALUATE, run="emptyrun"), "emptyrun has no unlearned_weights.safetensors"),
    "NaN in a loaded tensor": (
        _with(EVALUATE, run="nanrun"), f"tensor '{W_OUT_1}' contains NaN or infinite values"),
    "missing direction file": (
        _with(EVALUATE, ablate="nothing.safetensors"), "nothing.safetensors does not exist"),
    "--out is a file (unlearn)": (_with(UNLEARN, out="afile"), "--out afile is a file"),
    "--out is a file (demo)": (["demo", "--size", "test", "--out", "afile"], "afile: File exists"),
    "RMU config that is not JSON": (
        _with(UNLEARN, rmu_config="broken.json"), "broken.json line 1 is not valid JSON"),
    "RMU config with an unknown field": (
        _with(UNLEARN, rmu_config="bogus.json"), "bogus.json: RMUConfig has no field 'bogus'"),
    "RMU config without a layer": (
        _with(UNLEARN, layer=None, rmu_config="nolayer.json"),
        "nolayer.json: RMUConfig field 'layer' is missing"),
    "audit of an unlearned model that is not there": (
        _with(AUDIT, unlearned="nowhere"), "--unlearned nowhere does not exist"),
    "audit of a run with a corrupt config": (
        _with(AUDIT, unlearned="corruptrun"), "corruptrun/config.json line 1 is not valid JSON"),
    "bad device string": (_with(UNLEARN, device="gpu0"), "device 'gpu0' is not a torch device"),
}  # fmt: skip
if not torch.cuda.is_available():
    BAD_INPUT["CUDA asked for, none present"] = (
        _with(UNLEARN, device="cuda"),
        "device 'cuda' was asked for but CUDA is not available",
    )


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_naming_the_culprit(
    case, files, monkeypatch, capsys, no_network
):
    argv, message = BAD_INPUT[case]
    monkeypatch.chdir(files)
    code, _, err = run_cli(["-q", *argv], monkeypatch, capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX)  # one line, no traceback
    assert message in lines[0]
    assert not Path("out_run/unlearned_weights.safetensors").exists()


def test_the_good_versions_of_those_commands_succeed(
    files, tmp_path, monkeypatch, capsys, no_network
):
    """The table's base command lines work, so each row fails for its own reason."""
    monkeypatch.chdir(files)
    out = str(tmp_path / "out")
    for argv in (
        EVALUATE,
        _with(UNLEARN, out=out),
        _with(DIRECTION, out=out),
        _with(EVALUATE, run="run", ablate=out),
    ):
        assert run_cli(["-q", *argv], monkeypatch, capsys)[0] == 0, argv
    # AUDIT is the pipeline: covered by test_audit; here only that its options parse
    assert cli.build_parser().parse_args(_with(AUDIT, layer="1")).job


def test_debug_shows_the_traceback(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    with pytest.raises(UnlearnInterpError, match="ans4.jsonl line 2"):
        run_cli(["--debug", *_with(EVALUATE, mcq="ans4.jsonl")], monkeypatch, capsys)
    with pytest.raises(FileExistsError):
        run_cli(["--debug", "demo", "--size", "test", "--out", "afile"], monkeypatch, capsys)


@pytest.mark.parametrize("quiet", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_real_process_prints_one_error_line_and_no_traceback(files, quiet):
    """The installed behaviour (no test-only type checking): exit 2, exactly one error line, no
    traceback; with -q nothing else at all (no 'Loading weights' progress bar)."""
    argv = [*cli_command(), *(["-q"] if quiet else []), *_with(UNLEARN, layer="3")]
    done = subprocess.run(
        argv, cwd=files, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert error_lines(done.stderr) == [
        f"{PREFIX} layer 3 is out of range: the model has 3 blocks (valid 0..2)"
    ]
    if quiet:
        assert done.stderr.strip().splitlines() == error_lines(done.stderr)
    assert done.stdout == ""  # nothing printed by TransformerLens ("Moving model to device")


# ---------------------------------------------------------------------------------------------
# Prompts longer than the model's context: cut explicitly, with a warning
# ---------------------------------------------------------------------------------------------

LONG = "the quick brown fox jumps over the lazy dog " * 40  # ~400 tokens, context 64


def test_long_prompts_are_cut_to_the_context_with_a_warning(tiny_model, caplog):
    prompts = ["short prompt", LONG]
    with caplog.at_level("WARNING", logger="unlearn_interp"):
        means = directions.mean_activations(tiny_model, prompts, [0, 2], positions="all")
    assert "prompt 1 (and maybe others) is longer than the model's 64-token context" in caplog.text
    explicit = directions.mean_activations(tiny_model, prompts, [0, 2], "all", max_len=64)
    assert torch.equal(means, explicit)


def test_explicit_max_len_within_the_context_is_not_warned_about(tiny_model, caplog):
    with caplog.at_level("WARNING", logger="unlearn_interp"):
        directions.mean_activations(tiny_model, [LONG], [1], max_len=16)
    assert caplog.text == ""


def test_long_prompts_reach_every_analysis_without_an_index_error(tiny_model, caplog):
    unl = Variant("rmu", weights={W_OUT_1: torch.randn(128, 32)})
    prompts = [LONG, "short prompt"]
    with caplog.at_level("WARNING", logger="unlearn_interp"):
        d = directions.junk_direction(tiny_model, Variant("base"), unl, prompts, layer=1)
        profile = analysis.layer_profile(tiny_model, [Variant("base"), unl], prompts)
        cos = analysis.cos_distribution(tiny_model, prompts, d.vector, 1, positions="all")
        table = evaluation.compare_generations(
            tiny_model, [Variant("base"), unl], prompts, max_new_tokens=4, progress=False
        )
    assert d.vector.shape == (32,) and len(profile) == 2 * 3 and len(table) == 2
    assert len(cos) == 64 + len(tiny_model.tokenizer("short prompt")["input_ids"])
    assert "64-token context" in caplog.text and "first tokens are cut" in caplog.text


def test_mcq_and_rmu_truncate_long_inputs(tiny_model, caplog):
    item = MCQItem(LONG, ["a", "b", "c", "d"], 0, subject="biology")
    with caplog.at_level("WARNING", logger="unlearn_interp"):
        result = evaluation.mcq_accuracy(tiny_model, [item], progress=False)
    assert result.n == 1 and "exceed the model's 64-token context" in caplog.text
    cfg = rmu.RMUConfig(layer=1, steps=1, batch_size=2, max_len=4096)  # > n_ctx: cut to 64
    result = rmu.train_rmu(tiny_model, [[LONG, LONG]], [[LONG, "short"]], cfg, progress=False)
    assert result.history["loss"].notna().all() and len(result.history) == 1


def test_generation_longer_than_the_context_is_one_sentence(tiny_model):
    with pytest.raises(UnlearnInterpError, match="max_new_tokens 64 leaves no room"):
        evaluation.generate(tiny_model, ["a prompt"], max_new_tokens=64, progress=False)


def test_cli_direction_and_evaluate_accept_prompts_longer_than_the_context(
    files, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(files)
    out = tmp_path / "out"
    argv = _with(DIRECTION, prompts="long_prompts.txt", out=str(out))
    code, _, _ = run_cli(["-q", *argv], monkeypatch, capsys)
    assert code == 0 and (out / "direction.safetensors").is_file()
    code, stdout, _ = run_cli(["-q", *_with(EVALUATE, mcq="longq.jsonl")], monkeypatch, capsys)
    assert code == 0 and "base" in stdout


# ---------------------------------------------------------------------------------------------
# More library-level bad input (the rest lives in test_models/data/rmu/directions/evaluation)
# ---------------------------------------------------------------------------------------------


def test_ablating_a_direction_of_the_wrong_width_is_one_sentence(tiny_model):
    tokens = data.encode_batch(tiny_model.tokenizer, PROMPTS).tokens
    for hooks in (
        interventions.ablation_hooks(torch.randn(16)),
        (("blocks.0.hook_resid_post", interventions.add_vector_hook(torch.randn(16))),),
    ):
        with (
            pytest.raises(UnlearnInterpError, match="d_model 16 but the activation at blocks.0"),
            Variant("v", hooks=hooks).applied(tiny_model),
        ):
            tiny_model(tokens)
        assert hooks_left(tiny_model) == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1, 2], "RMUConfig must be an object of fields, got list"),
        ({"steps": 3}, "RMUConfig field 'layer' is missing"),
        ({"layer": 1, "bogus": 3}, "RMUConfig has no field 'bogus'"),
    ],
)
def test_malformed_rmu_config_is_one_sentence(values, message):
    with pytest.raises(UnlearnInterpError, match=message):
        rmu.RMUConfig.from_dict(values)


def test_devices_the_machine_lacks_are_one_sentence(tmp_path, tokenizer):
    with pytest.raises(UnlearnInterpError, match="'gpu0' is not a torch device"):
        models.load_model(tmp_path, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UnlearnInterpError, match="CUDA is not available"):
            models.load_model(tmp_path, device="cuda:0")
    else:
        with pytest.raises(UnlearnInterpError, match="does not exist: this machine has"):
            models.load_model(tmp_path, device=f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 5000, "line 1 is not valid JSON: nested too deeply"),
        ("1" * 5000, "line 1 is not valid JSON: Exceeds the limit (4300 digits)"),
        ('[{"text": "bad \\ud800 text"}]', "line 1 is not valid JSON: an escaped lone surrogate"),
    ],
)
def test_json_the_parser_chokes_on_is_one_sentence(tmp_path, content, message):
    (tmp_path / "c.json").write_text(content)
    with pytest.raises(UnlearnInterpError, match=re.escape(f"c.json {message}")):
        data.load_corpus(tmp_path / "c.json")


def test_an_escaped_emoji_pair_is_text_not_a_lone_surrogate(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "smile \\ud83d\\ude00"}\n')
    assert data.load_corpus(tmp_path / "c.jsonl") == ["smile \U0001f600"]


def test_unicode_digits_are_not_answers(tmp_path):
    row = {"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": "²", "subject": "x"}
    with pytest.raises(UnlearnInterpError, match="line 1: field 'answer' is '²'"):
        data.load_mcq(_jsonl(tmp_path / "m.jsonl", [row]))


# ---------------------------------------------------------------------------------------------
# Hook hygiene: raise in the middle, then no hook and the same weights
# ---------------------------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def raising(kind: type[BaseException]):
    def hook(activation, hook=None):
        raise kind("boom")

    return hook


FORGET = [t for t in CORPUS[:4]] * 2
RETAIN_DOCS = [t for t in CORPUS[4:8]] * 2


def _train(model, boom, hooks):
    cfg = rmu.RMUConfig(layer=1, steps=3, batch_size=2, max_len=32, lr=1e-2, steering_coef=10.0)
    return rmu.train_rmu(model, [FORGET], [RETAIN_DOCS], cfg, progress=False)


def _restored(model, boom, hooks):
    with analysis.restored_weights(model, [W_OUT_1]), torch.no_grad():
        models.get_param(model, W_OUT_1).add_(1.0)
        hooks[0][1](None)  # raises the test's exception


BASE = Variant("base")
# name -> call(model, variant with swapped weights and a raising hook, the raising hooks alone)
HOOK_USERS = {
    "Variant.applied": lambda m, v, h: _in(
        v, m, lambda: m(data.encode_batch(m.tokenizer, PROMPTS).tokens)
    ),
    "run_variants": lambda m, v, h: interventions.run_variants(
        m, [BASE, v], lambda model: model(data.encode_batch(model.tokenizer, PROMPTS).tokens)
    ),
    "mcq_accuracy letter (fwd_hooks)": lambda m, v, h: evaluation.mcq_accuracy(
        m, ITEMS, fwd_hooks=h, progress=False
    ),
    "mcq_accuracy continuation (variant)": lambda m, v, h: _in(
        v, m, lambda: evaluation.mcq_accuracy(m, ITEMS, mode="continuation", progress=False)
    ),
    "evaluate_variants": lambda m, v, h: evaluation.evaluate_variants(
        m, [BASE, v], {"t": ITEMS}, progress=False
    ),
    "generate": lambda m, v, h: evaluation.generate(m, PROMPTS, 3, fwd_hooks=h, progress=False),
    "compare_generations": lambda m, v, h: evaluation.compare_generations(
        m, [BASE, v], PROMPTS, max_new_tokens=3, progress=False
    ),
    "max_logit": lambda m, v, h: evaluation.max_logit(m, ITEMS, k=3, fwd_hooks=h, progress=False),
    "next_token_entropy": lambda m, v, h: evaluation.next_token_entropy(
        m, PROMPTS, fwd_hooks=h, progress=False
    ),
    "retain_loss": lambda m, v, h: evaluation.retain_loss(m, PROMPTS, fwd_hooks=h, progress=False),
    "mean_activations": lambda m, v, h: directions.mean_activations(m, PROMPTS, [1], variant=v),
    "junk_direction": lambda m, v, h: directions.junk_direction(m, BASE, v, PROMPTS, layer=1),
    "junk_direction pca": lambda m, v, h: directions.junk_direction(
        m, BASE, v, PROMPTS, layer=1, positions="all", method="pca"
    ),
    "candidate_directions": lambda m, v, h: directions.candidate_directions(m, BASE, v, PROMPTS),
    "extract_direction": lambda m, v, h: directions.extract_direction(
        m, BASE, v, PROMPTS, all_layers=True
    ),
    "layer_profile": lambda m, v, h: analysis.layer_profile(m, [BASE, v], PROMPTS),
    "cos_distribution": lambda m, v, h: analysis.cos_distribution(
        m, PROMPTS, torch.ones(32), 1, variant=v
    ),
    "restored_weights": _restored,
}


def _in(variant, model, fn):
    with variant.applied(model):
        return fn()


@pytest.mark.parametrize("kind", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("user", list(HOOK_USERS))
def test_no_hook_and_the_same_weights_after_an_error_inside(tiny_model, user, kind):
    hooks = (("blocks.0.hook_resid_pre", raising(kind)),)
    variant = Variant("boom", weights={W_OUT_1: torch.randn(128, 32)}, hooks=hooks)
    before = state(tiny_model)
    with pytest.raises(kind, match="boom"):
        HOOK_USERS[user](tiny_model, variant, hooks)
    assert hooks_left(tiny_model) == []
    assert_same_state(tiny_model, before)


@pytest.mark.parametrize("kind", [Boom, KeyboardInterrupt])
def test_rmu_puts_back_weights_and_grad_flags_when_interrupted_mid_training(
    tiny_model, monkeypatch, kind
):
    real, calls = rmu.masked_mse, []

    def fails_at_step_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # step 0: forget + retain; step 1: forget + retain; step 2: forget
            raise kind("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(rmu.loss, "masked_mse", fails_at_step_two)  # where the step looks it up
    tiny_model.blocks[0].attn.W_Q.requires_grad_(False)  # a flag that must survive as it was
    before = state(tiny_model)
    with pytest.raises(kind, match="boom"):
        _train(tiny_model, None, None)
    assert len(calls) == 5  # two optimiser steps changed W_out before the error
    assert hooks_left(tiny_model) == []
    assert_same_state(tiny_model, before)
    assert all(p.grad is None for p in tiny_model.parameters())


# --- pipeline steps ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory, tokenizer):
    """A run directory after the unlearn and directions steps, on a tiny model."""
    root = tmp_path_factory.mktemp("steps")
    cfg = rmu.RMUConfig(layer=1, steps=4, batch_size=2, max_len=32, lr=1e-2, steering_coef=20.0)
    run_steps(Run(pipeline.RunDir(root), _subject(tokenizer), progress=False),
              [Unlearn(cfg), Directions()])  # fmt: skip
    return root


def _subject(tokenizer) -> Subject:
    model = models.random_model(n_layers=3, d_model=32, n_heads=4, n_ctx=64, tokenizer=tokenizer)
    return Subject(
        model=model, title="tiny", forget_tasks=("hazardous",),
        tasks={"hazardous": Task(ITEMS, "continuation"), "benign": Task(ITEMS, "continuation")},
        prompts={"forget": PROMPTS, "retain": PROMPTS}, layer=1,
        forget_corpora=[FORGET], retain_corpora=[RETAIN_DOCS], max_new_tokens=3, batch_size=2,
    )  # fmt: skip


VARIANTS = ("base", "rmu", "rmu_ablated", "rmu_random_ablated")
STEPS = {
    "unlearn": (Unlearn(rmu.RMUConfig(layer=1, steps=4, batch_size=2, max_len=32, lr=1e-2)),
                rmu.UNLEARNED_WEIGHTS_FILE),
    "directions": (Directions(), directions.TENSOR_FILE),
    "accuracy": (Accuracy(VARIANTS), "tables/accuracy.csv"),
    "layer_profile": (LayerProfile(VARIANTS), "tables/layer_profile.csv"),
    "generations": (Generations(VARIANTS), "tables/generations.csv"),
}  # fmt: skip


@pytest.mark.parametrize("kind", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("step", list(STEPS))
def test_pipeline_step_leaves_no_hook_no_swapped_weight_and_no_output_after_an_error(
    prepared_run, tmp_path, tokenizer, monkeypatch, step, kind
):
    run_root = tmp_path / "run"
    shutil.copytree(prepared_run, run_root)
    chosen, output = STEPS[step]
    (run_root / output).unlink(missing_ok=True)
    subject = _subject(tokenizer)
    real_variants = RunVariants.variants

    def with_raising_hook(self, names=None):  # every variant a step builds raises inside forward
        return {
            name: v.with_hooks([("blocks.0.hook_resid_pre", raising(kind))], name=name)
            for name, v in real_variants(self, names).items()
        }

    monkeypatch.setattr(RunVariants, "variants", with_raising_hook)
    real_mse, calls = rmu.masked_mse, []

    def mse_fails_late(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise kind("boom")
        return real_mse(*args, **kwargs)

    monkeypatch.setattr(rmu.loss, "masked_mse", mse_fails_late)
    run = Run(pipeline.RunDir(run_root, force=True), subject, progress=False)
    before = state(subject.model)
    with pytest.raises(kind, match="boom"):
        run_steps(run, [chosen])
    assert hooks_left(subject.model) == []
    assert_same_state(subject.model, before)
    assert not (run_root / output).exists()
    assert list(run_root.rglob("*.tmp")) == []


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def _chain(tokenizer, out: Path, global_seed: int) -> dict:
    """RMU -> junk direction -> ablated MCQ accuracy on a fresh tiny model, saved to ``out``."""
    torch.manual_seed(global_seed)  # the global RNG must not matter
    model = models.random_model(n_layers=3, d_model=32, n_heads=4, n_ctx=64, tokenizer=tokenizer)
    cfg = rmu.RMUConfig(layer=1, steps=4, batch_size=2, max_len=32, lr=1e-2, steering_coef=20.0)
    result = rmu.train_rmu(model, [FORGET], [RETAIN_DOCS], cfg, progress=False)
    with torch.no_grad():
        for name, value in result.base_weights.items():
            models.get_param(model, name).copy_(value)
    unl = Variant("rmu", weights=result.unlearned_weights)
    d = directions.junk_direction(model, BASE, unl, PROMPTS, layer=1)
    ablated = unl.with_hooks(interventions.ablation_hooks(d.vector))
    acc = evaluation.evaluate_variants(
        model, [BASE, unl, ablated], {"t": ITEMS}, mode="continuation", progress=False
    )
    per_item = _in(ablated, model, lambda: evaluation.mcq_accuracy(model, ITEMS, "continuation"))
    result.save(out)
    d.save(out)
    return {"accuracy": acc, "per_item": per_item.per_item, "history": result.history}


def _bytes(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob(pattern))}


def test_same_seed_gives_byte_identical_weights_direction_and_metrics(tmp_path, tokenizer):
    first = _chain(tokenizer, tmp_path / "a", global_seed=1)
    second = _chain(tokenizer, tmp_path / "b", global_seed=2)
    pd.testing.assert_frame_equal(first["accuracy"], second["accuracy"], check_exact=True)
    pd.testing.assert_frame_equal(first["per_item"], second["per_item"], check_exact=True)
    pd.testing.assert_frame_equal(first["history"], second["history"], check_exact=True)
    a, b = _bytes(tmp_path / "a", "**/*.safetensors"), _bytes(tmp_path / "b", "**/*.safetensors")
    assert set(a) == {
        "base_weights.safetensors", "control_vectors.safetensors", "direction.safetensors",
        "unlearned_weights.safetensors",
    }  # fmt: skip
    assert a == b
    assert _bytes(tmp_path / "a", "tables/*.csv") == _bytes(tmp_path / "b", "tables/*.csv")


def test_cli_unlearn_twice_writes_identical_files(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(files)
    for out in ("a", "b"):
        argv = _with(UNLEARN, out=str(tmp_path / out), steps="3", seed="5")
        assert run_cli(["-q", *argv], monkeypatch, capsys)[0] == 0
    for pattern in ("*.safetensors", "tables/*.csv"):
        assert _bytes(tmp_path / "a", pattern) == _bytes(tmp_path / "b", pattern)
    assert len(_bytes(tmp_path / "a", "*.safetensors")) == 3


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_demo_twice_gives_identical_metrics_and_tensors(organism_test, tmp_path, threads):
    # At 2 threads TransformerLens' embedding backward (indexing) made the depth step's
    # relearned model differ in the last bits from run to run; the toolkit's embeddings do not.
    cache = organism_test.cache_path.parent
    with torch_threads(threads):
        for out in ("a", "b"):
            pipeline.run_demo(tmp_path / out, size="test", cache_dir=cache, progress=False)
    metrics = [json.loads((tmp_path / o / "metrics.json").read_text()) for o in ("a", "b")]
    for m in metrics:
        m.pop("seconds")
    assert metrics[0] == metrics[1]
    a, b = _bytes(tmp_path / "a", "*.safetensors"), _bytes(tmp_path / "b", "*.safetensors")
    assert len(a) >= 5 and a == b
    tables = [_bytes(tmp_path / o, "tables/*.csv") for o in ("a", "b")]
    assert tables[0] == tables[1]


# ---------------------------------------------------------------------------------------------
# Safe loading
# ---------------------------------------------------------------------------------------------

UNSAFE = {
    r"\bpickle\b": "pickle",
    r"\bdill\b|\bcloudpickle\b|\bjoblib\b|\bshelve\b|\bmarshal\b": "another unpickler",
    r"read_pickle|allow_pickle\s*=\s*True": "pickle through numpy/pandas",
    r"(?<![\w.])eval\(|(?<![\w.])exec\(": "eval/exec",
    r"trust_remote_code\s*=\s*True": "trust_remote_code switched on",
}


def test_the_package_never_unpickles_or_evaluates_code():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for pattern, what in UNSAFE.items():
            for match in re.finditer(pattern, text):
                line = text[: match.start()].count("\n") + 1
                found.append(f"{path.name}:{line}: {what}")
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start() : text.find(")", match.start()) + 1]
            if "weights_only=True" not in call:
                found.append(f"{path.name}: torch.load without weights_only=True")
    assert found == []


def test_trust_remote_code_is_off_unless_asked_and_then_passed_through(
    tmp_path, tokenizer, monkeypatch, no_network
):
    import inspect

    import transformers

    assert inspect.signature(models.load_model).parameters["trust_remote_code"].default is False
    assert "trust_remote_code" not in (PACKAGE / "cli.py").read_text()  # no CLI path turns it on
    path = save_hf_checkpoint("gpt2", tmp_path / "ckpt", tokenizer)
    seen: list[tuple[str, object]] = []
    for cls in (
        transformers.AutoConfig,
        transformers.AutoModelForCausalLM,
        transformers.AutoTokenizer,
    ):
        real = cls.from_pretrained.__func__

        def recording(klass, *args, _real=real, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code", "absent")))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(recording))
    models.load_model(path, device="cpu")
    models.variant_from_checkpoint(models.load_model(path, device="cpu"), path)
    assert seen and all(flag in (False, "absent") for _, flag in seen)
    # safetensors are streamed (no AutoModelForCausalLM); config and tokenizer still go through
    assert {name for name, _ in seen} >= {"AutoConfig", "AutoTokenizer"}
    seen.clear()
    models.load_model(path, device="cpu", trust_remote_code=True)
    assert all(flag in (True, "absent") for _, flag in seen)
    assert {name for name, flag in seen if flag is True} >= {"AutoConfig", "AutoTokenizer"}
    from safetensors.torch import load_file

    weights = path / "model.safetensors"  # a pickled-weights checkpoint builds the HF model
    torch.save(load_file(str(weights)), path / "pytorch_model.bin")
    weights.unlink()
    seen.clear()
    models.load_model(path, device="cpu", trust_remote_code=True)
    assert ("AutoModelForCausalLM", True) in seen


def test_commands_on_local_paths_never_unpickle_or_touch_the_network(
    files, tmp_path, monkeypatch, capsys, no_network
):
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.chdir(files)
    out = str(tmp_path / "run")
    assert run_cli(["-q", *_with(UNLEARN, out=out)], monkeypatch, capsys)[0] == 0
    assert run_cli(["-q", *_with(DIRECTION, run=out, out=out)], monkeypatch, capsys)[0] == 0
    assert run_cli(["-q", *_with(EVALUATE, run=out, ablate=out)], monkeypatch, capsys)[0] == 0


# ---------------------------------------------------------------------------------------------
# Interrupted runs: SIGKILL in a subprocess, then the next run
# ---------------------------------------------------------------------------------------------


def wait_for(predicate, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the process ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def assert_nothing_half_written(root: Path) -> None:
    """No temporary file; every artifact there is complete (safetensors and JSON parse)."""
    assert [str(p) for p in root.rglob("*.tmp")] == []
    for path in root.rglob("*.safetensors"):
        models.load_weights(path)
    for path in root.rglob("*.json"):
        artifacts.read_json(path)
    for path in root.rglob("*.csv"):
        pd.read_csv(path)


def test_killed_unlearn_leaves_no_partial_file_and_the_next_run_completes(
    files, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    log = tmp_path / "stderr.txt"
    argv = [*cli_command(), *_with(UNLEARN, out=str(out), steps="100000", max_len="64")]
    with log.open("w") as stderr:
        process = subprocess.Popen(argv, cwd=files, env=cli_env(), stderr=stderr)
        try:
            wait_for(lambda: "INFO unlearn_interp.rmu: RMU:" in log.read_text(), process, 240,
                     "training started")  # fmt: skip
            time.sleep(1.0)  # a few optimiser steps in
        finally:
            kill(process)
    if out.exists():
        assert_nothing_half_written(out)
    assert not (out / rmu.UNLEARNED_WEIGHTS_FILE).exists()  # nothing claims to be finished
    monkeypatch.chdir(files)
    assert run_cli(["-q", *_with(UNLEARN, out=str(out), steps="2")], monkeypatch, capsys)[0] == 0
    assert_nothing_half_written(out)
    assert len(rmu.RMUResult.load(out).history) == 2


KILL_DURING_WRITE = """
import os, signal, sys
from unlearn_interp.artifacts import atomic_path  # what save_weights writes through
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"\\x00" * 1000)  # half a safetensors file, then SIGKILL
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_in_the_middle_of_a_write_leaves_no_truncated_artifact(tmp_path):
    target = tmp_path / "unlearned_weights.safetensors"
    done = subprocess.run(
        [sys.executable, "-c", KILL_DURING_WRITE, str(target)], env=cli_env(), timeout=300
    )
    assert done.returncode == -signal.SIGKILL
    assert not target.exists()  # the half-written bytes never took the artifact's name
    leftovers = list(tmp_path.glob(".unlearned_weights.safetensors.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 1000
    models.save_weights({"w": torch.ones(3)}, target)  # the next write cleans up after the dead
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert torch.equal(models.load_weights(target)["w"], torch.ones(3))


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    live = tmp_path / f".table.csv.{os.getpid()}.abc123.tmp"
    live.write_text("being written")
    artifacts.write_text(tmp_path / "table.csv", "done")
    assert live.exists() and (tmp_path / "table.csv").read_text() == "done"


def test_a_forced_run_killed_half_way_leaves_no_stale_step_looking_finished(tmp_path):
    """--force rewrites step 'a', then dies before step 'b': the next plain run must redo 'b'
    (whose old output, made from the old 'a', is still on disk) and keep the new 'a'."""
    calls = []

    def compute(name, value):
        def write():
            calls.append(name)
            artifacts.write_text(tmp_path / f"{name}.txt", value)

        return write

    run = pipeline.RunDir(tmp_path)
    run.step("a", ["a.txt"], compute("a", "old"))
    run.step("b", ["b.txt"], compute("b", "old"))
    forced = pipeline.RunDir(tmp_path, force=True)
    forced.step("a", ["a.txt"], compute("a", "new"))

    def killed():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        forced.step("b", ["b.txt"], killed)
    calls.clear()
    again = pipeline.RunDir(tmp_path)
    again.step("a", ["a.txt"], compute("a", "newer"))
    again.step("b", ["b.txt"], compute("b", "new"))
    assert calls == ["b"]
    assert (tmp_path / "a.txt").read_text() == "new" and (tmp_path / "b.txt").read_text() == "new"


SWEEP = """
import sys, time
from unlearn_interp import analysis
def measure(point):
    time.sleep(0.2)
    return {"value": point["x"] ** 2}
analysis.run_sweep([{"x": x} for x in range(40)], measure, table_path=sys.argv[1],
                   settings={"kind": "squares"}, progress=False)
"""


def test_killed_sweep_keeps_finished_points_and_resumes(tmp_path):
    table = tmp_path / "sweep.csv"
    record = tmp_path / ("sweep" + analysis.SWEEP_RECORD_SUFFIX)
    process = subprocess.Popen([sys.executable, "-c", SWEEP, str(table)], env=cli_env())
    try:
        wait_for(
            lambda: record.is_file() and len(artifacts.read_json(record)["points"]) >= 3,
            process, 240, "three finished points",
        )  # fmt: skip
    finally:
        kill(process)
    assert_nothing_half_written(tmp_path)
    finished = [p["x"] for p in artifacts.read_json(record)["points"]]
    assert 3 <= len(finished) < 40
    measured = []

    def measure(point):
        measured.append(point["x"])
        return {"value": point["x"] ** 2}

    points = [{"x": x} for x in range(40)]
    result = analysis.run_sweep(
        points, measure, table_path=table, settings={"kind": "squares"}, progress=False
    )
    assert measured == [x for x in range(40) if x not in finished]  # finished points not redone
    assert result["x"].tolist() == list(range(40))
    assert (result["value"] == result["x"] ** 2).all()


@pytest.mark.slow
def test_killed_demo_resumes_from_finished_steps_and_force_recomputes(organism_test, tmp_path):
    """``demo --size test`` killed while a later step runs: the finished steps' artifacts stay
    complete and are reused by the next run (their timings kept), which completes; ``--force``
    runs every step again."""
    env = cli_env(UNLEARN_INTERP_CACHE=str(organism_test.cache_path.parent))
    out = tmp_path / "demo"
    log = tmp_path / "stderr.txt"
    argv = [*cli_command(), "demo", "--size", "test", "--out", str(out)]
    with log.open("w") as stderr:
        process = subprocess.Popen(argv, env=env, stderr=stderr)
        try:
            wait_for(lambda: re.search(r"step accuracy\s+running", log.read_text()), process,
                     1500, "the accuracy step")  # fmt: skip
            time.sleep(0.5)
        finally:
            kill(process)
    assert_nothing_half_written(out)
    first = artifacts.read_json(out / RunFiles.STEP_SECONDS)
    assert {"unlearn", "directions"} <= set(first) and "accuracy" not in first
    assert not (out / "metrics.json").exists()

    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1500)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert re.search(r"step unlearn\s+skipped", resumed.stderr)
    assert re.search(r"step directions\s+skipped", resumed.stderr)
    assert re.search(r"step accuracy\s+running", resumed.stderr)
    second = artifacts.read_json(out / RunFiles.STEP_SECONDS)
    assert {k: second[k] for k in ("unlearn", "directions")} == {
        k: first[k] for k in ("unlearn", "directions")
    }
    assert (out / "metrics.json").is_file()
    assert_nothing_half_written(out)

    forced = subprocess.run(
        [*argv, "--force"], env=env, capture_output=True, text=True, timeout=1500
    )
    assert forced.returncode == 0, forced.stderr[-2000:]
    for step in ("unlearn", "directions", "accuracy", "layer_profile", "generations", "depth"):
        assert re.search(rf"step {step}\s+running", forced.stderr), step
    assert "skipped" not in forced.stderr
