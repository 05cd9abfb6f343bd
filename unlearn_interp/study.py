"""The real-model study's old import path: every name lives in :mod:`unlearn_interp.pipeline.study`.

>>> from unlearn_interp.study import run_model_demo                    # doctest: +SKIP
"""

from __future__ import annotations

from unlearn_interp.pipeline.study import *  # noqa: F403
from unlearn_interp.pipeline.study import __all__  # noqa: F401
