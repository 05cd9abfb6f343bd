"""Runs of the toolkit as ordered lists of resumable steps, each writing its part of a run
directory (tables, figures, files), with ``metrics.json`` and ``report.md`` assembled once from
the steps' summaries.

* :mod:`.step`: the step contract and the engine (:func:`~.step.run_pipeline`); :mod:`.rundir`
  (the run directory: paths, records, settings), :mod:`.subject` (what a run studies),
  :mod:`.variants` (the run's variants, read from its files), :mod:`.report` (report.md);
* :mod:`.steps`: the steps every pipeline shares (unlearn, directions, accuracy, layer profile,
  generations); :mod:`.depth` (the depth profile) and :mod:`.ledger` (the recovery ledger);
* the pipelines: :mod:`.organism_demo` (``unlearn-interp demo``), :mod:`.study` (the real-model
  study, ``demo --model smollm2-135m``), :mod:`.audit` (``audit``, any unlearned model against
  its base); :mod:`.gallery` (the committed figures) and :mod:`.jobs` (what each command does).

    >>> from unlearn_interp.pipeline import run_demo
    >>> metrics = run_demo("runs/demo", size="test")                        # doctest: +SKIP
"""

from __future__ import annotations

from unlearn_interp.pipeline.organism_demo import organism_rmu_config, run_demo
from unlearn_interp.pipeline.rundir import RunDir

__all__ = ["RunDir", "organism_rmu_config", "run_demo"]
