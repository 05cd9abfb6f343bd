"""Atomic artifact writing and JSON helpers shared by every module that writes a run directory.

An interrupted run must never leave a half-written file that a later run mistakes for a finished
one, so every artifact is written to a temporary file in the same directory and renamed into
place (``os.replace`` is atomic on POSIX and Windows).

    >>> from unlearn_interp.artifacts import write_json, read_json
    >>> write_json(tmp_path / "config.json", {"layer": 7})      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unlearn_interp.errors import UnlearnInterpError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    >>> with atomic_path("out/table.csv") as tmp:               # doctest: +SKIP
    ...     df.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    prefix = f".{path.name}.{os.getpid()}."
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by a process that was killed mid-write (SIGKILL, power
    loss): their names carry the writer's pid, and only those of dead processes are removed."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or cannot tell: keep its file
    return True


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (tensors and paths must be converted first)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, failing with one sentence that names the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise UnlearnInterpError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UnlearnInterpError(f"{path} is not UTF-8 text ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise UnlearnInterpError(f"{path} line {err.lineno} is not valid JSON: {err.msg}") from err


def cache_root() -> Path:
    """The toolkit's cache: ``$UNLEARN_INTERP_CACHE``, else ``$XDG_CACHE_HOME/unlearn_interp``,
    else ``~/.cache/unlearn_interp``. Trained organisms, figure work directories and fetched
    assets (``assets/<name>/``) live under it.

    >>> cache_root()                                    # doctest: +SKIP
    PosixPath('/home/me/.cache/unlearn_interp')
    """
    if os.environ.get("UNLEARN_INTERP_CACHE"):
        return Path(os.environ["UNLEARN_INTERP_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "unlearn_interp"


def library_versions() -> dict[str, str]:
    """Versions of python and the libraries that change numerics, recorded with every run."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("unlearn-interp", "torch", "transformer-lens", "transformers", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def jsonable(obj: Any) -> Any:
    """Fallback for ``json.dumps``: paths become strings, numpy/torch scalars become numbers."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class RunFiles:
    """Every file name of a run directory (docs/architecture.md "The run directory"), in one place.

    Relative to the run directory; per-table CSVs are ``table(name)``.

    >>> RunFiles.table("layer_profile")
    'tables/layer_profile.csv'
    """

    CONFIG = "config.json"
    METRICS = "metrics.json"
    REPORT = "report.md"
    CONTROL_VECTORS = "control_vectors.safetensors"
    UNLEARNED_WEIGHTS = "unlearned_weights.safetensors"
    BASE_WEIGHTS = "base_weights.safetensors"
    DIRECTION = "direction.safetensors"
    DIRECTION_JSON = "direction.json"
    RANDOM_DIRECTION = "random_direction.safetensors"
    SUBSPACE = "subspace.safetensors"
    SUBSPACE_JSON = "subspace.json"
    RANDOM_SUBSPACE = "random_subspace.safetensors"
    TABLES = "tables"
    FIGURES = "figures"
    STEP_SECONDS = "tables/step_seconds.json"
    RMU_HISTORY = "tables/rmu_history.csv"
    MCQ_PER_ITEM = "tables/mcq_per_item.csv"
    BASE_PER_ITEM = "tables/base_per_item.csv"
    ACCURACY = "tables/accuracy.csv"
    LAYER_PROFILE = "tables/layer_profile.csv"
    GENERATIONS = "tables/generations.csv"
    DIRECTION_CANDIDATES = "tables/direction_candidates.csv"
    LEDGER = "tables/ledger.csv"

    @staticmethod
    def table(name: str) -> str:
        """``tables/<name>.csv``."""
        return f"{RunFiles.TABLES}/{name}.csv"
