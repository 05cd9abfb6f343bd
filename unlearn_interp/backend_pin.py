"""The TransformerLens releases this toolkit's patches were read and tested against: one pin for
both :mod:`backend_speed` (parameters in the forward's layout) and :mod:`backend_decode` (cached
attention). Each ``install`` acts only when :func:`is_tested_version` holds and otherwise leaves
TransformerLens running unpatched. Widening :data:`TESTED_VERSIONS` means reading both patched
forwards of the new release again and running ``tests/test_backend_speed.py`` and
``tests/test_backend_decode.py``.

    >>> from unlearn_interp import backend_pin
    >>> backend_pin.is_tested_version("3.9.0"), backend_pin.is_tested_version("4.0.0")
    (True, False)
"""

from __future__ import annotations

import functools
import importlib.metadata

# TransformerLens releases whose forwards were read and tested against both patches.
TESTED_VERSIONS = ("3.9.",)


@functools.cache
def backend_version() -> str:
    """The installed TransformerLens version."""
    return importlib.metadata.version("transformer_lens")


def is_tested_version(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed one) is one the patches were tested on."""
    return (version or backend_version()).startswith(TESTED_VERSIONS)


__all__ = ["TESTED_VERSIONS", "backend_version", "is_tested_version"]
