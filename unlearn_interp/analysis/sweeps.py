"""The sweep engine: one loop over points, many thin specialisations (as TransformerLens'
``patching.py``).

:func:`run_sweep` calls a measurement at each point, stacks the rows it returns (the point's keys
first), writes the table as it goes and resumes an interrupted sweep; :func:`run_sweep_tables` is
the same for a measurement that returns several tables. The record of finished points lives
beside the first table (``<stem>.sweep.json``) with the settings the rows depend on, so a rerun
with other settings starts afresh.

    >>> table = run_sweep([{"layer": l} for l in range(4)],
    ...                   lambda p: {"phi": phi_at(p["layer"])}, table_path="phi.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from unlearn_interp import artifacts
from unlearn_interp.errors import UnlearnInterpError

log = logging.getLogger(__name__)

Scalar = str | int | float | bool | None
Point = Mapping[str, Scalar]
Rows = pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Any]
SWEEP_RECORD_SUFFIX = ".sweep.json"  # beside the first table: settings and finished points


def run_sweep(
    points: Sequence[Point],
    measure: Callable[[dict[str, Scalar]], Rows],
    *,
    table_path: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    desc: str = "sweep",
    progress: bool = True,
) -> pd.DataFrame:
    """Call ``measure(point)`` for every point and stack the rows it returns into one table.

    Each row gets the point's keys as its first columns. With ``table_path`` the table is
    written (CSV, atomically) after every finished point, so an interrupted sweep keeps its
    finished rows, and a rerun with the same ``settings`` skips the points already done (a
    rerun with other settings starts afresh). ``measure`` returns a DataFrame, a list of
    row dicts or one row dict.

    >>> table = run_sweep([{"layer": l} for l in range(4)],
    ...                   lambda p: {"phi": phi_at(p["layer"])}, table_path="phi.csv")  # doctest: +SKIP
    """
    tables = run_sweep_tables(
        points,
        lambda point: {"rows": measure(point)},
        table_paths=None if table_path is None else {"rows": table_path},
        settings=settings,
        desc=desc,
        progress=progress,
    )
    return tables["rows"]


def run_sweep_tables(
    points: Sequence[Point],
    measure: Callable[[dict[str, Scalar]], Mapping[str, Rows]],
    *,
    table_paths: Mapping[str, str | os.PathLike] | None = None,
    settings: Mapping[str, Any] | None = None,
    desc: str = "sweep",
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """:func:`run_sweep` for a ``measure`` that returns several tables, ``{name: rows}``.

    ``table_paths`` names a CSV file per table (every table ``measure`` returns needs one);
    the record of finished points lives beside the first (``<stem>.sweep.json``). Tables are
    written before the record, so a crash between the two only costs that point's rows,
    which the rerun recomputes.

    >>> tables = run_sweep_tables(points, measure, table_paths={"accuracy": "acc.csv",
    ...                                                         "cos": "cos.csv"})  # doctest: +SKIP
    """
    points = _checked_points(points)
    paths = {name: Path(p) for name, p in (table_paths or {}).items()}
    store = _SweepStore(paths, settings) if paths else None
    frames = store.load() if store else {}
    done = {_point_id(f) for f in (store.finished if store else [])}
    todo = [p for p in points if _point_id(p) not in done]
    with _progress_bar(len(points), len(points) - len(todo), desc, progress) as bar:
        for point in todo:
            _add_rows(frames, measure(dict(point)), point, paths if store else None, desc)
            if store:
                store.save(frames, point)
            bar.update()
    if store:
        return store.read()
    return {
        name: _numeric_keys(pd.concat(parts, ignore_index=True), points[0])
        for name, parts in frames.items()
    }


def _progress_bar(total: int, done: int, desc: str, progress: bool) -> tqdm:
    return tqdm(
        total=total, initial=done, desc=desc, unit="point", disable=None if progress else True
    )


def _add_rows(
    frames: dict[str, list[pd.DataFrame]],
    produced: Mapping[str, Rows],
    point: Mapping[str, Scalar],
    paths: Mapping[str, Path] | None,
    desc: str,
) -> None:
    """Append each table ``measure`` produced at ``point`` (keys first) to ``frames``; with
    ``paths`` (a written sweep), every table needs one."""
    for name, rows in produced.items():
        if paths is not None and name not in paths:
            raise UnlearnInterpError(
                f"sweep {desc!r}: measure returned table {name!r}, which has no path"
            )
        frames.setdefault(name, []).append(_with_point(_as_frame(rows), point))


def _checked_points(points: Sequence[Point]) -> list[dict[str, Scalar]]:
    """Points as plain dicts of JSON scalars (numpy numbers become Python numbers), unique."""
    checked, seen = [], set()
    for point in points:
        clean = {}
        for key, value in dict(point).items():
            if hasattr(value, "item") and not isinstance(value, (str, bytes)):
                value = value.item()  # numpy / torch scalar
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise UnlearnInterpError(
                    f"sweep point {dict(point)}: {key!r} must be a str, number, bool or None"
                )
            clean[key] = value
        if _point_id(clean) in seen:
            raise UnlearnInterpError(f"sweep point {clean} appears twice")
        seen.add(_point_id(clean))
        checked.append(clean)
    if not checked:
        raise UnlearnInterpError("a sweep needs at least one point")
    return checked


def _point_id(point: Mapping[str, Scalar]) -> str:
    return json.dumps(dict(point), sort_keys=True)


def _numeric_keys(table: pd.DataFrame, point: Mapping[str, Scalar]) -> pd.DataFrame:
    """Key columns holding only numbers and None become float columns (None -> NaN), as they
    read back from CSV, so an in-memory sweep and a written one give the same dtypes."""
    for key in point:
        values = table[key].dropna()
        if len(values) < len(table) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            table[key] = pd.to_numeric(table[key], errors="coerce").astype(float)
    return table


def _as_frame(rows: Rows) -> pd.DataFrame:
    if isinstance(rows, pd.DataFrame):
        return rows.reset_index(drop=True)
    if isinstance(rows, Mapping):
        return pd.DataFrame([dict(rows)])
    return pd.DataFrame([dict(r) for r in rows])


def _with_point(frame: pd.DataFrame, point: Mapping[str, Scalar]) -> pd.DataFrame:
    """``frame`` with the point's keys as its first columns (a clash is an error)."""
    clash = [k for k in point if k in frame.columns]
    if clash:
        raise UnlearnInterpError(f"sweep rows already have column(s) {clash} of the point")
    keys = pd.DataFrame({k: [v] * len(frame) for k, v in point.items()}, index=frame.index)
    return pd.concat([keys, frame], axis=1)


class _SweepStore:
    """The CSV tables of a sweep and the JSON record of which points finished, with how many
    rows each table then held (so rows of an unfinished point are dropped on resume)."""

    def __init__(self, paths: Mapping[str, Path], settings: Mapping[str, Any] | None) -> None:
        self.paths = dict(paths)
        first = next(iter(self.paths.values()))
        self.record_path = first.with_name(first.stem + SWEEP_RECORD_SUFFIX)
        self.settings = json.loads(json.dumps(dict(settings or {}), default=artifacts.jsonable))
        self.finished: list[dict[str, Scalar]] = []
        self.counts: dict[str, int] = {}

    def load(self) -> dict[str, list[pd.DataFrame]]:
        """Finished rows of a previous run with the same settings (nothing otherwise)."""
        if not self.record_path.is_file():
            return {}
        record = artifacts.read_json(self.record_path)
        if record.get("settings") != self.settings or set(record.get("counts", {})) - set(
            self.paths
        ):
            log.warning(
                "%s was made with other settings; starting the sweep afresh", self.record_path
            )
            return {}
        frames = {}
        for name, count in record["counts"].items():
            if count and not self.paths[name].is_file():
                log.warning("%s is missing; starting the sweep afresh", self.paths[name])
                return {}
            frames[name] = [self._read(name, count)]
        self.finished, self.counts = record["points"], dict(record["counts"])
        log.info("%s: resuming after %d finished points", self.record_path, len(self.finished))
        return frames

    def _read(self, name: str, count: int) -> pd.DataFrame:
        return pd.read_csv(self.paths[name]).iloc[:count] if count else pd.DataFrame()

    def save(self, frames: Mapping[str, list[pd.DataFrame]], point: Mapping[str, Scalar]) -> None:
        """Write every table, then the record that ``point`` finished."""
        for name, parts in frames.items():
            table = pd.concat(parts, ignore_index=True)
            with artifacts.atomic_path(self.paths[name]) as tmp:
                table.to_csv(tmp, index=False)
            self.counts[name] = len(table)
        self.finished.append(dict(point))
        record = {"settings": self.settings, "points": self.finished, "counts": self.counts}
        artifacts.write_json(self.record_path, record)

    def read(self) -> dict[str, pd.DataFrame]:
        """The tables as written: a resumed and a fresh sweep return the same thing."""
        return {name: self._read(name, count) for name, count in self.counts.items()}


__all__ = ["SWEEP_RECORD_SUFFIX", "Point", "Rows", "Scalar", "run_sweep", "run_sweep_tables"]
