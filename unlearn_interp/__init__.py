"""unlearn_interp: mechanistic interpretability of machine unlearning.

Apply RMU to a TransformerLens ``HookedTransformer`` through residual-stream hooks, extract the
"junk" direction it writes, ablate it, and measure how much hazardous knowledge comes back.

    >>> from unlearn_interp import models, interventions
    >>> model = models.random_model(n_layers=2, d_model=32)

Submodules are imported on use: ``from unlearn_interp import models, rmu, directions``.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from unlearn_interp.errors import UnlearnInterpError

try:
    __version__ = version("unlearn-interp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_SUBMODULES = {
    "activations",
    "analysis",
    "artifacts",
    "data",
    "directions",
    "evaluation",
    "hf_convert",
    "interventions",
    "models",
    "organism",
    "pipeline",
    "plotting",
    "real_data",
    "rmu",
    "sources",
    "stats",
    "training",
    "variants",
}

__all__ = ["UnlearnInterpError", "__version__", *sorted(_SUBMODULES)]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return import_module(f"unlearn_interp.{name}")
    raise AttributeError(f"module 'unlearn_interp' has no attribute {name!r}")
