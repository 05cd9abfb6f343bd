"""The notebooks run top to bottom on the "test" organism (slow: ``pytest -m slow``) and
tell their stories there, and are stored without outputs.

The kernel is this interpreter (a kernel spec written to a temporary JUPYTER_PATH, which takes
precedence over any user-installed "python3" spec), so a fresh CI virtualenv works as is.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01_rmu_is_mostly_shallow.ipynb", "02_adaptive_rmu.ipynb", "03_recovery_ledger.ipynb")
# The ledger's oracle twin exists only for the model organism: that notebook has no real-data cell.
ORGANISM_ONLY = {"03_recovery_ledger.ipynb"}
KERNEL = "unlearn-interp-tests"


@pytest.fixture
def kernel_env(tmp_path, monkeypatch, organism_test):
    """A kernel spec for sys.executable, the test organism's cache, and the "test" size."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("UNLEARN_INTERP_CACHE", str(organism_test.cache_path.parent))
    monkeypatch.setenv("UNLEARN_INTERP_NOTEBOOK_SIZE", "test")
    monkeypatch.setenv("TQDM_DISABLE", "1")


def summary_of(nb) -> dict:
    """The value of the notebook's last cell (``summary``), from its text/plain output."""
    outputs = nb.cells[-1].outputs
    text = next(
        o["data"]["text/plain"] for o in outputs if o.get("output_type") == "execute_result"
    )
    return ast.literal_eval(text.replace("nan", "None"))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs_and_has_one_real_data_cell(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    if name in ORGANISM_ONLY:
        return
    marked = [c for c in code if "REAL CHECKPOINTS AND DATA" in c.source]
    assert len(marked) == 1 and "BASE_CHECKPOINT = None" in marked[0].source


@pytest.mark.slow  # RMU runs, eleven short sweep trainings, the oracle and the ledger: minutes
def test_notebooks_run_on_the_test_organism(kernel_env):
    executed = {}
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        client = nbclient.NotebookClient(
            nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}}
        )
        client.execute()
        executed[name] = summary_of(nb)

    shallow = executed["01_rmu_is_mostly_shallow.ipynb"]
    acc = shallow["accuracy"]
    assert acc["rmu"]["hazardous"] < acc["base"]["hazardous"] - 0.2  # RMU unlearned something
    gaps = shallow["gap_recovered"]["hazardous"]
    assert gaps["junk"] > gaps["random"] + 0.2  # ablating the junk direction brings more back

    adaptive = executed["02_adaptive_rmu.ipynb"]
    cos = adaptive["median_cos_u_by_coef"]
    assert cos[max(cos)] > cos[min(cos)]  # a larger c aligns forget activations with u
    assert len(adaptive["layer_sweep_accuracy"]) == 2 * len(adaptive["natural_forget_norm"])

    ledger = executed["03_recovery_ledger.ipynb"]
    oracle = ledger["oracle_pretrained_accuracy"]
    assert oracle["T"] >= 0.9 and oracle["V"] <= 0.25 + 0.1  # the oracle never saw V
    assert set(ledger["attacks"]) == {"none", "ablation", "quantize", "relearn", "benign_finetune"}
    assert ledger["every_forget_row_has_an_interval"]
    gaps = ledger["gap_recovered_V"]
    assert (
        gaps["ablation:junk_direction:unlearned"]
        > gaps["ablation:random_direction:unlearned"] + 0.2
    )
