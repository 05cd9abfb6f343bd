"""A run directory: resumable named steps, the record of how long each took, tables and config.

Each step writes its artifacts atomically and is skipped when they already exist and its time
was recorded, so an interrupted run resumes where it stopped (``force=True`` recomputes
everything, ``recompute={"ledger"}`` the steps named). File names come from
:class:`unlearn_interp.artifacts.RunFiles`.

    >>> run = RunDir("runs/demo")                                          # doctest: +SKIP
    >>> run.step("accuracy", [RunFiles.ACCURACY], compute)                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from unlearn_interp import artifacts
from unlearn_interp.artifacts import RunFiles
from unlearn_interp.errors import UnlearnInterpError

log = logging.getLogger(__name__)

TABLES, FIGURES = RunFiles.TABLES, RunFiles.FIGURES
STEP_TIMES = RunFiles.STEP_SECONDS


class RunDir:
    """A run directory: paths, the step runner, and the record of how long each step took."""

    def __init__(
        self, root: str | os.PathLike, force: bool = False, recompute: Collection[str] = ()
    ) -> None:
        self.root = Path(root)
        self.force = force
        self.recompute = frozenset(recompute)
        self.root.mkdir(parents=True, exist_ok=True)
        # a recomputation killed half-way must not leave older steps looking finished
        if force:
            self.path(STEP_TIMES).unlink(missing_ok=True)
        elif self.recompute & set(self.seconds()):
            kept = {k: v for k, v in self.seconds().items() if k not in self.recompute}
            artifacts.write_json(self.path(STEP_TIMES), kept)

    def recomputes(self, name: str) -> bool:
        """Whether step ``name`` is computed again even if it finished before."""
        return self.force or name in self.recompute

    def path(self, name: str) -> Path:
        return self.root / name

    def done(self, outputs: Sequence[str]) -> bool:
        return all(self.path(name).exists() for name in outputs)

    def step(self, name: str, outputs: Sequence[str], compute: Callable[[], None]) -> None:
        """Run ``compute`` unless it finished before: its time is recorded and every output
        exists (and ``force`` is off)."""
        if self.done(outputs) and name in self.seconds() and not self.recomputes(name):
            log.info("step %-13s skipped: %s already written", name, ", ".join(outputs))
            return
        log.info("step %-13s running", name)
        start = time.perf_counter()
        compute()
        missing = [o for o in outputs if not self.path(o).exists()]
        if missing:  # a bug, not bad input: the step did not write what it promised
            raise RuntimeError(f"step {name} finished without writing {missing}")
        self.record_seconds(name, time.perf_counter() - start)

    def record_seconds(self, name: str, seconds: float) -> None:
        times = self.seconds()
        times[name] = round(seconds, 3)
        artifacts.write_json(self.path(STEP_TIMES), times)

    def seconds(self) -> dict[str, float]:
        path = self.path(STEP_TIMES)
        return artifacts.read_json(path) if path.is_file() else {}

    def write_table(self, name: str, table: pd.DataFrame) -> None:
        with artifacts.atomic_path(self.path(RunFiles.table(name))) as tmp:
            table.to_csv(tmp, index=False)

    def table(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.path(RunFiles.table(name)))

    def config(self) -> dict[str, Any]:
        """``config.json`` as it stands (empty before any step wrote it)."""
        path = self.path(RunFiles.CONFIG)
        return artifacts.read_json(path) if path.is_file() else {}

    def record_config(self, key: str, value: Any) -> None:
        """Set ``config.json[key]``, keeping what other steps wrote there."""
        record = self.config()
        record[key] = value
        artifacts.write_json(self.path(RunFiles.CONFIG), record)

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        """Refuse to resume a run made with other settings (another model, size or seed)."""
        record = self.config()
        previous = record.get("pipeline")
        if previous is not None and previous != _jsonable(settings) and not self.force:
            changed = sorted(
                k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k)
            )
            raise UnlearnInterpError(
                f"{self.root} holds a run made with other settings ({', '.join(changed)}); "
                "use a new --out directory or --force"
            )
        record["pipeline"] = _jsonable(settings)
        record["library_versions"] = artifacts.library_versions()
        artifacts.write_json(self.path(RunFiles.CONFIG), record)


def _jsonable(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as JSON would read it back (tuples become lists), so comparisons are fair."""
    return json.loads(json.dumps(dict(settings), default=artifacts.jsonable))


def with_dtype(settings: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
    """``settings`` plus ``"dtype"`` when ``dtype`` is set and not float32 (the default, left
    out so runs made before the option existed still resume), e.g. ``"bfloat16"``."""
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return dict(settings) if name == "float32" else {**settings, "dtype": name}
