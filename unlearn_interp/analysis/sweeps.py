"""The sweep engine: one loop over points, many thin specialisations (as TransformerLens'
``patching.py``).

:func:`run_sweep` calls a measurement at each point, stacks the rows it returns (the point's keys
first), writes the table as it goes and resumes an interrupted sweep; :func:`run_sweep_tables` is
the same for a measurement that returns several tables. The record of finished points lives
beside the first table (``<stem>.sweep.json``) with the settings the rows depend on, so a rerun
with other settings starts afresh. An executor (:mod:`unlearn_interp.executors`) says where the
points run: in this process (the default) or on Ray workers. Points may finish in any order;
each is written when it finishes, and the tables list the points in the order given, so every
executor gives the same tables and a sweep started on one can finish on another. A point that
failed on every attempt of a Ray executor gets one row with ``failed=True`` and its ``error``
(successful rows then have ``failed=False``) and is not recorded as finished: a rerun retries it.

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
from unlearn_interp.executors import Executor, SerialExecutor, TaskFailed

log = logging.getLogger(__name__)

Scalar = str | int | float | bool | None
Point = Mapping[str, Scalar]
Rows = pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Any]
Block = dict[str, pd.DataFrame]  # one point's rows, per table
SWEEP_RECORD_SUFFIX = ".sweep.json"  # beside the first table: settings and finished points
FAILED, ERROR = "failed", "error"  # columns added when some point failed


def run_sweep(
    points: Sequence[Point],
    measure: Callable[[dict[str, Scalar]], Rows],
    *,
    table_path: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    desc: str = "sweep",
    progress: bool = True,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Call ``measure(point)`` for every point and stack the rows it returns into one table.

    Each row gets the point's keys as its first columns. With ``table_path`` the table is
    written (CSV, atomically) after every finished point, so an interrupted sweep keeps its
    finished rows, and a rerun with the same ``settings`` skips the points already done (a
    rerun with other settings starts afresh). ``measure`` returns a DataFrame, a list of
    row dicts or one row dict. ``executor`` runs the points (default: serially, here); for
    Ray, ``measure`` and what it captures must be picklable.

    >>> table = run_sweep([{"layer": l} for l in range(4)],
    ...                   lambda p: {"phi": phi_at(p["layer"])}, table_path="phi.csv")  # doctest: +SKIP
    """
    tables = _sweep(
        points,
        _RowsAsTable(measure),
        {"rows": table_path} if table_path is not None else None,
        settings,
        ("rows",),
        desc,
        progress,
        executor,
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
    executor: Executor | None = None,
) -> dict[str, pd.DataFrame]:
    """:func:`run_sweep` for a ``measure`` that returns several tables, ``{name: rows}``.

    ``table_paths`` names a CSV file per table (every table ``measure`` returns needs one);
    the record of finished points lives beside the first (``<stem>.sweep.json``). Tables are
    written before the record, so a crash between the two only costs that point's rows,
    which the rerun recomputes.

    >>> tables = run_sweep_tables(points, measure, table_paths={"accuracy": "acc.csv",
    ...                                                         "cos": "cos.csv"})  # doctest: +SKIP
    """
    names = tuple(table_paths or ())
    return _sweep(points, measure, table_paths, settings, names, desc, progress, executor)


class _RowsAsTable:
    """``measure`` of :func:`run_sweep` as a one-table measure (a class, so it pickles)."""

    def __init__(self, measure: Callable[[dict[str, Scalar]], Rows]) -> None:
        self.measure = measure

    def __call__(self, point: dict[str, Scalar]) -> dict[str, Rows]:
        return {"rows": self.measure(point)}


def _sweep(
    points: Sequence[Point],
    measure: Callable[[dict[str, Scalar]], Mapping[str, Rows]],
    table_paths: Mapping[str, str | os.PathLike] | None,
    settings: Mapping[str, Any] | None,
    names: Sequence[str],
    desc: str,
    progress: bool,
    executor: Executor | None,
) -> dict[str, pd.DataFrame]:
    """The loop both entry points share: run the points not yet finished on ``executor``,
    keep (and write) each point's tables as it finishes, return them in point order."""
    points = _checked_points(points)
    paths = {name: Path(p) for name, p in (table_paths or {}).items()}
    store = _SweepStore(paths, settings) if paths else None
    blocks = store.load() if store else {}
    todo = [p for p in points if _point_id(p) not in blocks]
    order = {_point_id(p): i for i, p in enumerate(points)}
    failed: dict[str, TaskFailed] = {}
    with _progress_bar(len(points), len(points) - len(todo), desc, progress) as bar:
        results = (executor or SerialExecutor()).run(measure, [dict(p) for p in todo], desc)
        for index, produced in results:
            point = todo[index]
            if isinstance(produced, TaskFailed):
                failed[_point_id(point)] = produced
            else:
                blocks[_point_id(point)] = _point_tables(produced, point, paths or None, desc)
            if store:
                store.save(_in_point_order(blocks, failed, order, names))
            bar.update()
    if store:
        return store.read()
    tables = _in_point_order(blocks, failed, order, names).tables()
    return {name: _numeric_keys(table, points[0]) for name, table in tables.items()}


def _progress_bar(total: int, done: int, desc: str, progress: bool) -> tqdm:
    return tqdm(
        total=total, initial=done, desc=desc, unit="point", disable=None if progress else True
    )


def _point_tables(
    produced: Mapping[str, Rows],
    point: Mapping[str, Scalar],
    paths: Mapping[str, Path] | None,
    desc: str,
) -> Block:
    """Each table ``measure`` produced at ``point``, keys first; with ``paths`` (a written
    sweep), every table needs one."""
    tables = {}
    for name, rows in produced.items():
        if paths is not None and name not in paths:
            raise UnlearnInterpError(
                f"sweep {desc!r}: measure returned table {name!r}, which has no path"
            )
        tables[name] = _with_point(_as_frame(rows), point)
    return tables


class _Ordered:
    """Every point's rows (finished and failed), in the order the tables list them."""

    def __init__(self, ids: list[str], blocks: Mapping[str, Block], failed: set[str]) -> None:
        self.ids, self.blocks, self.failed = ids, blocks, failed

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables; with a failed point, ``failed`` marks every row."""
        names = dict.fromkeys(name for pid in self.ids for name in self.blocks[pid])
        return {
            name: pd.concat(
                [
                    _marked(self.blocks[pid][name], pid in self.failed, bool(self.failed))
                    for pid in self.ids
                    if name in self.blocks[pid]
                ],
                ignore_index=True,
            )
            for name in names
        }


def _in_point_order(
    blocks: Mapping[str, Block],
    failed: Mapping[str, TaskFailed],
    order: Mapping[str, int],
    names: Sequence[str],
) -> _Ordered:
    """The points in this run's order (points of an earlier run that are not among this run's
    come first, in the order they were recorded); a failed point is one row per table."""
    names = list(names) or list(dict.fromkeys(n for block in blocks.values() for n in block))
    if failed and not names:
        first = next(iter(failed.values()))
        raise UnlearnInterpError(f"every point of the sweep failed; the first: {first.error}")
    everything = {**blocks, **{pid: _failure_rows(pid, f, names) for pid, f in failed.items()}}
    recorded = list(everything)

    def position(pid: str) -> tuple[int, int]:
        return (1, order[pid]) if pid in order else (0, recorded.index(pid))

    return _Ordered(sorted(recorded, key=position), everything, set(failed))


def _failure_rows(pid: str, failure: TaskFailed, names: Sequence[str]) -> Block:
    """One row per table for a point that failed: its keys, ``failed=True`` and the error."""
    row = {**json.loads(pid), FAILED: True, ERROR: f"{failure.error} ({failure.attempts} attempts)"}
    return {name: pd.DataFrame([row]) for name in names}


def _marked(frame: pd.DataFrame, is_failure: bool, any_failed: bool) -> pd.DataFrame:
    """A successful point's rows get ``failed=False`` when some point failed, their integer and
    bool columns nullable types, so the failed rows' blanks do not turn 3 into 3.0 on disk."""
    if not any_failed or is_failure:
        return frame
    nullable = {
        c: "Int64" if kind == "i" else "boolean"
        for c, kind in frame.dtypes.map(lambda d: d.kind).items()
        if kind in "ib"
    }
    return frame.astype(nullable).assign(**{FAILED: False})


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
    """The CSV tables of a sweep and the JSON record of which points finished. The record's
    ``blocks`` list every point written, in table order, with how many rows it has in each
    table, so a resumed sweep can put points in order and drops the rows of points that did
    not finish (or failed). ``points`` and ``counts`` (rows of finished points) are kept for
    records written before ``blocks`` existed."""

    def __init__(self, paths: Mapping[str, Path], settings: Mapping[str, Any] | None) -> None:
        self.paths = dict(paths)
        first = next(iter(self.paths.values()))
        self.record_path = first.with_name(first.stem + SWEEP_RECORD_SUFFIX)
        self.settings = json.loads(json.dumps(dict(settings or {}), default=artifacts.jsonable))
        self.names: list[str] = []  # the tables written

    def load(self) -> dict[str, Block]:
        """Finished points' rows of a previous run with the same settings (none otherwise)."""
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
        for name, count in record["counts"].items():
            if count and not self.paths[name].is_file():
                log.warning("%s is missing; starting the sweep afresh", self.paths[name])
                return {}
        blocks = self._blocks(record) if "blocks" in record else self._legacy_blocks(record)
        self.names = [name for name in self.paths if name in record["counts"]]
        log.info("%s: resuming after %d finished points", self.record_path, len(blocks))
        return blocks

    def _blocks(self, record: Mapping[str, Any]) -> dict[str, Block]:
        """Split each table into the record's blocks; keep those of finished points (failed
        points' rows are not even parsed, so the columns keep the types of a clean run)."""
        entries = record["blocks"]
        tables = {name: self._read(name, _failed_rows(entries, name)) for name in self.paths}
        starts = dict.fromkeys(tables, 0)
        blocks = {}
        for entry in (e for e in entries if not e.get(FAILED)):
            block = {}
            for name, n in entry["rows"].items():
                block[name] = tables[name].iloc[starts[name] : starts[name] + n]
                block[name] = block[name].drop(columns=[FAILED, ERROR], errors="ignore")
                starts[name] += n
            blocks[_point_id(entry["point"])] = block
        return blocks

    def _legacy_blocks(self, record: Mapping[str, Any]) -> dict[str, Block]:
        """A record without ``blocks``: the finished rows as one block, at the last point."""
        blocks: dict[str, Block] = {_point_id(point): {} for point in record["points"]}
        whole = {name: self._read(name).iloc[:count] for name, count in record["counts"].items()}
        if record["points"]:
            blocks[_point_id(record["points"][-1])] = whole
        return blocks

    def _read(self, name: str, skip: Sequence[int] = ()) -> pd.DataFrame:
        """Table ``name`` as written, without its rows ``skip`` (0 = the first row)."""
        path = self.paths[name]
        if not (path.is_file() and path.stat().st_size):
            return pd.DataFrame()
        return pd.read_csv(path, skiprows=[row + 1 for row in skip])  # + 1: the header

    def save(self, ordered: _Ordered) -> None:
        """Write every table (points in order), then the record of the finished points."""
        tables = ordered.tables()
        self.names = list(tables)
        for name, table in tables.items():
            with artifacts.atomic_path(self.paths[name]) as tmp:
                table.to_csv(tmp, index=False)
        entries = [
            {
                "point": json.loads(pid),
                FAILED: pid in ordered.failed,
                "rows": {name: len(t) for name, t in ordered.blocks[pid].items()},
            }
            for pid in ordered.ids
        ]
        finished = [e for e in entries if not e[FAILED]]
        counts = {name: sum(e["rows"].get(name, 0) for e in finished) for name in self.names}
        record = {
            "settings": self.settings,
            "points": [e["point"] for e in finished],
            "counts": counts,
            "blocks": entries,
        }
        artifacts.write_json(self.record_path, record)

    def read(self) -> dict[str, pd.DataFrame]:
        """The tables as written: a resumed and a fresh sweep return the same thing."""
        return {name: self._read(name) for name in self.names}


def _failed_rows(entries: Sequence[Mapping[str, Any]], name: str) -> list[int]:
    """Row numbers of table ``name`` that hold failed points (the record lists every block)."""
    rows, start = [], 0
    for entry in entries:
        n = entry["rows"].get(name, 0)
        if entry.get(FAILED):
            rows += range(start, start + n)
        start += n
    return rows


__all__ = ["SWEEP_RECORD_SUFFIX", "Point", "Rows", "Scalar", "run_sweep", "run_sweep_tables"]
