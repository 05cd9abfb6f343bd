"""pipeline.gallery: the `figures` command writes every figure as a PNG, and fails in one sentence when
PNG export is impossible."""

from __future__ import annotations

import pytest

from unlearn_interp import cli, plotting
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.pipeline import gallery
from unlearn_interp.pipeline.gallery import _spread


def test_figures_fail_in_one_sentence_without_static_export(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(plotting, "static_export_problem", lambda: "no Chrome/Chromium was found")
    with pytest.raises(UnlearnInterpError, match="no Chrome/Chromium was found; enable it"):
        gallery.make_figures(tmp_path, size="test", work_dir=tmp_path / "work")
    assert cli.main(["figures", "--out", str(tmp_path), "--size", "test"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not list(tmp_path.glob("*.png"))


def test_spread_keeps_the_ends_and_spaces_the_rest():
    assert _spread([1.0, 2.0, 3.0, 4.0, 5.0], 3) == [1.0, 3.0, 5.0]
    assert _spread([1.0, 2.0], 3) == [1.0, 2.0]


@pytest.mark.slow
def test_figures_command_writes_every_png_and_a_rerun_only_redraws(
    tmp_path, monkeypatch, organism_test
):
    if plotting.static_export_problem() is not None:
        pytest.skip(f"PNG export is unavailable: {plotting.static_export_problem()}")
    monkeypatch.setenv("UNLEARN_INTERP_CACHE", str(organism_test.cache_path.parent))
    paths = gallery.make_figures(tmp_path / "figs", size="test", work_dir=tmp_path / "work")
    assert sorted(p.stem for p in paths) == sorted(gallery.FIGURES)
    assert all(p.suffix == ".png" and p.stat().st_size > 10_000 for p in paths)
    stamps = {p: p.stat().st_mtime for p in (tmp_path / "work" / "sweeps").glob("*.csv")}
    assert len(stamps) >= 6
    gallery.make_figures(tmp_path / "figs", size="test", work_dir=tmp_path / "work")
    assert {p: p.stat().st_mtime for p in stamps} == stamps  # sweeps were not recomputed
