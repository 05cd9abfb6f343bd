"""The committed figures' old import path: every name lives in :mod:`unlearn_interp.pipeline.gallery`.

>>> from unlearn_interp.gallery import make_figures                    # doctest: +SKIP
"""

from __future__ import annotations

from unlearn_interp.pipeline.gallery import *  # noqa: F403
from unlearn_interp.pipeline.gallery import __all__  # noqa: F401
