"""The recovery ledger's parts on an executor: serially and on a 2-worker local Ray
the ledger tables are identical; a ledger interrupted on one finishes on the other with the same
table, computing only the parts it lacked; a part failing on every Ray attempt is reported once
every other part is written, never silently left out of the table; the shipped context pickles
with its model once. The fast tests attack a real-model demo run made on the spot with a tiny
model (tests/test_ledger.py); the slow one attacks a test-size organism demo run."""

from __future__ import annotations

import dataclasses
import json
import shutil

import cloudpickle
import pandas as pd
import pytest
import torch
from test_ledger import (
    REAL_SETTINGS,
    demo_ledger,
    finetune_failing_at_seed_1,
    make_model_demo_run,
    only_finetune_seed_1_may_run,
    study_ledger,
    tiny_study,
)

from unlearn_interp import cli, models, organism, pipeline, plotting
from unlearn_interp.attacks.finetune import FinetuneConfig
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import TaskFailed
from unlearn_interp.organism.oracle import split_facts
from unlearn_interp.pipeline import jobs
from unlearn_interp.pipeline.ledger import parts as ledger_parts
from unlearn_interp.pipeline.ledger import step as ledger
from unlearn_interp.pipeline.ledger import subjects as ledger_subjects
from unlearn_interp.pipeline.rundir import RunDir
from unlearn_interp.pipeline.variants import RunVariants

pytest.importorskip("ray")  # a guard only: the dev extra installs Ray

# Two fine-tuning seeds, so the ledger has five parts to spread over two workers.
SETTINGS = dataclasses.replace(REAL_SETTINGS, finetune_seeds=(0, 1))
PARTS = ["reference", "ablation", "quantize", "finetune_seed0", "finetune_seed1"]


@pytest.fixture(scope="module", autouse=True)
def html_figures():
    """The ledger's figure as HTML only: PNG export takes seconds and is not what is tested."""
    save = plotting.save_figure
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plotting, "save_figure", lambda fig, path, *a, **k: save(fig, path, ["html"]))
        yield


@pytest.fixture(scope="module")
def demo_run(tokenizer, tmp_path_factory):
    """A finished real-model demo run on a tiny model (no ledger yet), and its study."""
    torch.manual_seed(0)
    model = models.random_model(n_layers=3, d_model=32, n_heads=4, n_ctx=64, tokenizer=tokenizer)
    loaded = tiny_study(model)
    root = tmp_path_factory.mktemp("ledger_executor") / "run"
    make_model_demo_run(root, loaded)
    return root, loaded


@pytest.fixture(scope="module")
def serial(demo_run, tmp_path_factory):
    """The ledger of a copy of the run, computed serially (the default executor)."""
    root, loaded = demo_run
    out = tmp_path_factory.mktemp("serial") / "run"
    shutil.copytree(root, out)
    table = study_ledger(out, loaded, SETTINGS)
    return out, table


def copy_of(demo_run, tmp_path):
    shutil.copytree(demo_run[0], tmp_path / "run")
    return tmp_path / "run"


def part_bytes(run) -> dict[str, bytes]:
    return {name: (run / ledger_parts.part_file(name)).read_bytes() for name in PARTS}


def part_seconds(run) -> dict[str, float]:
    times = json.loads((run / "tables/step_seconds.json").read_text())
    return {name: times[f"ledger_{name}"] for name in PARTS if f"ledger_{name}" in times}


@pytest.mark.slow  # ~90 s; the default suite keeps the interrupted-serial-finishes-on-Ray test
def test_ledger_on_two_ray_workers_equals_the_serial_ledger(demo_run, serial, ray_executor,
                                                            tmp_path):  # fmt: skip
    run = copy_of(demo_run, tmp_path)
    table = study_ledger(run, demo_run[1], SETTINGS, ray_executor)
    pd.testing.assert_frame_equal(table, serial[1])
    assert len(table) == len(serial[1]) > 0
    assert part_bytes(run) == part_bytes(serial[0])  # every part's rows, byte for byte
    assert set(part_seconds(run)) == set(PARTS)


def test_interrupted_serial_ledger_finishes_on_ray(demo_run, serial, ray_executor, tmp_path,
                                                   monkeypatch):  # fmt: skip
    run = copy_of(demo_run, tmp_path)
    finetune = finetune_failing_at_seed_1(monkeypatch, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        study_ledger(run, demo_run[1], SETTINGS)
    finished = part_seconds(run)
    assert set(finished) == set(PARTS) - {"finetune_seed1"}
    assert not (run / "tables/ledger.csv").exists() and not list(run.rglob("*.tmp"))
    only_finetune_seed_1_may_run(monkeypatch, finetune)
    table = study_ledger(run, demo_run[1], SETTINGS, ray_executor)
    pd.testing.assert_frame_equal(table, serial[1])
    assert {k: v for k, v in part_seconds(run).items() if k in finished} == finished


def test_a_part_failing_twice_on_ray_is_reported_and_the_ledger_finishes_serially(
    demo_run, serial, ray_executor, tmp_path, monkeypatch
):
    run = copy_of(demo_run, tmp_path)
    finetune = finetune_failing_at_seed_1(monkeypatch, RuntimeError("no memory left for seed 1"))
    with pytest.raises(ledger_parts.LedgerPartsFailed, match="finetune_seed1") as raised:
        study_ledger(run, demo_run[1], SETTINGS, ray_executor)
    failed = TaskFailed("RuntimeError: no memory left for seed 1", attempts=2)
    assert raised.value.failed == {"finetune_seed1": failed}
    assert "run the ledger again" in str(raised.value)
    finished = part_seconds(run)
    assert set(finished) == set(PARTS) - {"finetune_seed1"}  # every other part written
    assert not (run / "tables/ledger.csv").exists()  # no table lacking the failed part
    only_finetune_seed_1_may_run(monkeypatch, finetune)
    table = study_ledger(run, demo_run[1], SETTINGS)
    pd.testing.assert_frame_equal(table, serial[1])
    assert {k: v for k, v in part_seconds(run).items() if k in finished} == finished


def test_the_shipped_parts_hold_the_model_once_and_compute_the_same_rows(demo_run, tmp_path):
    run = RunDir(copy_of(demo_run, tmp_path))
    loaded = demo_run[1]
    variants = RunVariants(RunDir(run.path("seeds/rmu-seed0")))
    subject = ledger_subjects.question_subject(variants, loaded.subject(), 0)
    context = ledger_parts.LedgerContext(run, subject, batch_size=8)
    task = ledger_parts.PartTask(ledger_parts.planned_parts(context))
    shipped = cloudpickle.dumps(task)
    model_alone = len(cloudpickle.dumps(loaded.model))
    assert model_alone < len(shipped) < 1.5 * model_alone  # one copy for all five parts
    rows, seconds = cloudpickle.loads(shipped)("reference")
    pd.testing.assert_frame_equal(rows, ledger_parts.reference_part(context))
    assert seconds > 0


def test_a_missing_part_is_computed_again_on_ray(demo_run, serial, ray_executor, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(serial[0], run)
    (run / ledger_parts.part_file("quantize")).unlink()
    table = study_ledger(run, demo_run[1], SETTINGS, ray_executor)
    pd.testing.assert_frame_equal(table, serial[1])
    assert (run / "tables/ledger.csv").read_bytes() == (
        serial[0] / "tables/ledger.csv"
    ).read_bytes()


@pytest.mark.parametrize("options, kind", [([], "serial"), (["--executor", "ray"], "ray")])
def test_cli_demo_hands_its_executor_to_the_demo(options, kind, ray_executor, tmp_path,
                                                 monkeypatch, capsys):  # fmt: skip
    seen = {}

    def stop(out, **kwargs):
        seen.update(kwargs)
        raise UnlearnInterpError("stopped before the demo")

    monkeypatch.setattr(jobs, "run_demo", stop)
    assert cli.main(["demo", "--out", str(tmp_path / "run"), *options]) == 2
    assert seen["executor"].name == kind
    assert "stopped before the demo" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The organism (slow: a demo run, its oracle twin and two ledgers)
# ---------------------------------------------------------------------------------------------

ORGANISM_SETTINGS = ledger.LedgerSettings(
    n_boot=100, bits=(4,), finetune=(FinetuneConfig(steps=2, lr=1e-3, eval_every=1),),
    finetune_seeds=(0, 1),
)  # fmt: skip


@pytest.mark.slow
def test_organism_ledger_on_ray_equals_the_serial_ledger(organism_test, ray_executor, tmp_path):
    cache = organism_test.cache_path.parent
    first = tmp_path / "serial"
    pipeline.run_demo(first, size="test", cache_dir=cache, progress=False, ledger=False,
                      depth=False)  # fmt: skip
    second = tmp_path / "ray"
    shutil.copytree(first, second)
    org = organism.load_organism("test", cache_dir=cache, progress=False)  # our own copy
    weights = {n: p.detach().clone() for n, p in org.model.named_parameters()}
    serial_table = demo_ledger(first, org, ORGANISM_SETTINGS, depth=False)
    ray_table = demo_ledger(second, org, ORGANISM_SETTINGS, depth=False, executor=ray_executor)
    pd.testing.assert_frame_equal(ray_table, serial_table)
    assert set(ray_table["model"]) == {"unlearned", "base", "oracle"}
    assert all(torch.equal(p, weights[n]) for n, p in org.model.named_parameters())


@pytest.mark.slow
def test_organism_oracle_twin_pickles_loaded(organism_test):
    split = split_facts(organism_test.world, seed=0)
    twin = ledger_subjects.OracleTwin(organism_test, split, organism_test.cache_path.parent, False)
    loaded = twin()["oracle"][0]
    copy = cloudpickle.loads(cloudpickle.dumps(twin))  # a worker's copy: no second load
    assert copy.model is not None and copy()["oracle"][1].name == "oracle"
    assert all(torch.equal(a, b) for a, b in zip(copy.model.parameters(), loaded.parameters(),
                                                 strict=True))  # fmt: skip
