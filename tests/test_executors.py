"""Executors: a sweep gives the same tables serially and on Ray workers, resumes across them, and
marks points that failed twice instead of dropping them.

One local Ray (two worker processes, conftest's ``ray_executor``) serves the session; the
organism sweeps run four points (the base and three steering coefficients) with one torch thread
on each side, so the tables must be equal, not close.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil

import cloudpickle
import pandas as pd
import pytest
import torch

from unlearn_interp import analysis, artifacts, backend_components, rmu
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.executors import (
    RayExecutor,
    SerialExecutor,
    TaskFailed,
    make_executor,
)
from unlearn_interp.pipeline.organism_demo import organism_rmu_config

COEFS = [30.0, 300.0, 3000.0]  # with the base: a 4-point coefficient sweep


# ---------------------------------------------------------------------------------------------
# Without Ray
# ---------------------------------------------------------------------------------------------


def test_serial_executor_runs_in_order_and_lets_exceptions_through():
    assert list(SerialExecutor().run(lambda x: x * 2, [3, 1, 2])) == [(0, 6), (1, 2), (2, 4)]

    def boom(x):
        raise KeyError(x)

    with pytest.raises(KeyError):
        list(SerialExecutor().run(boom, [1]))


def test_make_executor_checks_its_input():
    assert make_executor().name == "serial"
    assert make_executor("ray", workers=3).workers == 3
    with pytest.raises(UnlearnInterpError, match="unknown executor"):
        make_executor("dask")
    with pytest.raises(UnlearnInterpError, match="need --executor ray"):
        make_executor("serial", workers=2)
    with pytest.raises(UnlearnInterpError, match="positive"):
        RayExecutor(workers=0)


def test_models_pickle_with_their_tokenizer_and_components(organism_test):
    model = organism_test.model
    assert backend_components.uses_toolkit_components(model)
    copy = pickle.loads(cloudpickle.dumps(model))
    assert backend_components.uses_toolkit_components(copy)  # the components survive pickling
    kinds = {n: type(m) for n, m in model.named_modules()}
    assert {n: type(m) for n, m in copy.named_modules()} == kinds
    params, copied = dict(model.named_parameters()), dict(copy.named_parameters())
    assert all(params[n].stride() == copied[n].stride() for n in params)
    assert all(torch.equal(params[n], copied[n]) for n in params)
    text = organism_test.hazardous_prompts[0]
    assert copy.tokenizer(text)["input_ids"] == model.tokenizer(text)["input_ids"]


# ---------------------------------------------------------------------------------------------
# On a 2-worker local Ray
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def coefficient_sweep(org, executor, table_dir=None, coefs=COEFS):
    cfg = organism_rmu_config(org, 0)
    cfg = rmu.RMUConfig.from_dict({**cfg.to_dict(), "steps": 8})
    setup = analysis.MCQSetup(mode=org.mcq_mode, prompt_template=org.qa_template, batch_size=32)
    return analysis.coefficient_sweep(
        org.model, [org.forget_corpus], [org.retain_corpus], org.mcq, cfg, coefs=coefs,
        cos_prompts=[org.hazardous_prompts[:8]], maxlogit_items=org.hazardous_mcq[:4],
        maxlogit_tokens=4, setup=setup, table_dir=table_dir, progress=False, executor=executor,
    )  # fmt: skip


@pytest.fixture(scope="module")
def serial_tables(organism_test, tmp_path_factory):
    """The 4-point sweep run serially (one thread), written to a table directory."""
    table_dir = tmp_path_factory.mktemp("serial_sweep")
    with one_thread():
        tables = coefficient_sweep(organism_test, None, table_dir)
    return table_dir, tables


def assert_same_tables(got, expected):
    assert set(got) == set(expected) == {"accuracy", "cos", "max_logit", "norms"}
    for name in expected:
        pd.testing.assert_frame_equal(got[name], expected[name], check_exact=True)


def test_ray_sweep_gives_the_serial_tables(organism_test, serial_tables, ray_executor, tmp_path):
    _, expected = serial_tables
    before = {n: p.detach().clone() for n, p in organism_test.model.named_parameters()}
    got = coefficient_sweep(organism_test, ray_executor, tmp_path)
    assert_same_tables(got, expected)
    assert expected["accuracy"]["variant"].tolist() == ["base"] * 2 + ["rmu"] * 6  # point order
    assert expected["accuracy"]["accuracy"].nunique() > 1  # RMU at c = 3000 changed something
    # The driver's model is untouched: each worker trained (and restored) its own copy.
    assert all(torch.equal(p, before[n]) for n, p in organism_test.model.named_parameters())


def drop_last_point(table_dir):
    """What a sweep killed after writing its last point's rows but before recording it leaves."""
    record_path = table_dir / f"coef_sweep_accuracy{analysis.SWEEP_RECORD_SUFFIX}"
    record = artifacts.read_json(record_path)
    record["blocks"] = record["blocks"][:-1]
    record["points"] = record["points"][:-1]
    artifacts.write_json(record_path, record)


def test_sweep_started_serially_finishes_on_ray_and_back(
    organism_test, serial_tables, ray_executor, tmp_path
):
    serial_dir, expected = serial_tables
    shutil.copytree(serial_dir, tmp_path / "to_ray")
    drop_last_point(tmp_path / "to_ray")
    assert_same_tables(
        coefficient_sweep(organism_test, ray_executor, tmp_path / "to_ray"), expected
    )

    ray_dir = tmp_path / "from_ray"
    coefficient_sweep(organism_test, ray_executor, ray_dir, coefs=COEFS[:2])  # 3 of 4 points
    with one_thread():
        resumed = coefficient_sweep(organism_test, None, ray_dir)
    assert_same_tables(resumed, expected)


def test_a_task_that_fails_twice_is_marked_failed_and_retried_on_the_next_run(
    ray_executor, tmp_path
):
    path = tmp_path / "squares.csv"

    def flaky_at_two(point):
        if point["x"] == 2:
            raise ValueError("no square for two")
        return {"square": point["x"] ** 2}

    points = [{"x": x} for x in range(4)]
    table = analysis.run_sweep(points, flaky_at_two, table_path=path, executor=ray_executor)
    assert table["x"].tolist() == [0, 1, 2, 3]
    assert table["failed"].tolist() == [False, False, True, False]
    assert table.loc[2, "error"] == "ValueError: no square for two (2 attempts)"
    assert table["square"].isna().tolist() == [False, False, True, False]
    record = artifacts.read_json(path.with_name("squares" + analysis.SWEEP_RECORD_SUFFIX))
    assert record["points"] == [{"x": 0}, {"x": 1}, {"x": 3}]  # not recorded as finished

    calls = []

    def square(point):
        calls.append(point["x"])
        return {"square": point["x"] ** 2}

    again = analysis.run_sweep(points, square, table_path=path)  # serially, the failed point only
    assert calls == [2]
    assert list(again.columns) == ["x", "square"]  # no failure left: no failure columns
    assert again["square"].tolist() == [0, 1, 4, 9] and again["square"].dtype == int


def test_a_task_that_fails_once_is_retried_and_succeeds(ray_executor, tmp_path):
    marker = tmp_path / "failed_once"

    def fails_first_time(x):
        if x == 1 and not marker.exists():
            marker.touch()
            raise RuntimeError("first attempt")
        return x + 100

    assert sorted(ray_executor.run(fails_first_time, [0, 1, 2])) == [(0, 100), (1, 101), (2, 102)]
    assert marker.exists()


def test_in_memory_sweep_on_ray_lists_points_in_order(ray_executor):
    def slow_first(point):
        if point["x"] == 0:
            import time

            time.sleep(2)  # point 0 finishes after the others
        return [{"square": point["x"] ** 2, "i": i} for i in range(2)]

    points = [{"x": x, "name": f"p{x}"} for x in range(4)]
    on_ray = analysis.run_sweep(points, slow_first, executor=ray_executor)
    pd.testing.assert_frame_equal(on_ray, analysis.run_sweep(points, slow_first))
    assert on_ray["x"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_worker_that_dies_is_retried_then_reported(ray_executor):  # last: workers restart
    def dies(x):
        os._exit(1)

    [(index, failure)] = list(ray_executor.run(dies, ["a"]))
    assert index == 0 and failure == TaskFailed(error="worker died", attempts=2)


def test_a_sweep_recorded_before_blocks_existed_still_resumes(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": [0, 0, 1, 1], "v": [0, 1, 10, 11]}).to_csv(path, index=False)
    record = {"settings": {}, "points": [{"x": 0}, {"x": 1}], "counts": {"rows": 4}}
    artifacts.write_json(tmp_path / ("t" + analysis.SWEEP_RECORD_SUFFIX), record)
    calls = []

    def measure(point):
        calls.append(point["x"])
        return [{"v": point["x"] * 10 + i} for i in range(2)]

    table = analysis.run_sweep([{"x": x} for x in range(3)], measure, table_path=path)
    assert calls == [2]
    assert table["v"].tolist() == [0, 1, 10, 11, 20, 21]
