"""Saving figures: self-contained HTML always, PNG/SVG/PDF where static export works (kaleido
>= 1 plus a Chrome/Chromium browser, found here without starting it), every file atomically.

Getting PNG export (checked on Debian 12): ``pip install "unlearn-interp[static]"`` (kaleido >= 1),
then a browser: ``apt-get install chromium`` (kaleido finds ``/usr/bin/chromium`` on ``PATH``),
or ``plotly_get_chrome -y`` (downloads Chrome for Testing), or ``BROWSER_PATH=/path/to/chrome``.

    >>> save_figure(fig, "figures/layer_norms", formats=("html", "png"))  # doctest: +SKIP
    [PosixPath('figures/layer_norms.html'), PosixPath('figures/layer_norms.png')]
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from unlearn_interp.artifacts import atomic_path
from unlearn_interp.errors import UnlearnInterpError

logger = logging.getLogger(__name__)

STATIC_FORMATS = ("png", "svg", "pdf")
ENABLE_STATIC_HINT = (
    'enable it with `pip install "unlearn-interp[static]"` (kaleido >= 1) plus a browser: '
    "`apt-get install chromium` (Debian/Ubuntu), `plotly_get_chrome -y`, "
    "or BROWSER_PATH=/path/to/chrome"
)

_WARNED: set[str] = set()  # one warning per distinct problem per process, not one per figure
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _find_browser() -> str | None:
    """The browser kaleido would use: BROWSER_PATH, plotly_get_chrome's download, or PATH."""
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except (ImportError, AttributeError, TypeError):  # another choreographer layout: search PATH
        return next((p for p in map(shutil.which, _BROWSER_NAMES) if p), None)


def static_export_problem() -> str | None:
    """Why PNG/SVG export cannot work here (None when kaleido >= 1 and a browser are present).

    A cheap check that starts no browser; an export can still fail later (e.g. a browser that
    crashes), which :func:`save_figure` reports the same way.

    >>> static_export_problem()                                          # doctest: +SKIP
    'no Chrome/Chromium browser was found'
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        kaleido_version = version("kaleido")
    except PackageNotFoundError:
        return "kaleido is not installed"
    if int(kaleido_version.split(".")[0]) < 1:
        return f"kaleido {kaleido_version} is installed but >= 1 is needed"
    browser_path = os.environ.get("BROWSER_PATH")
    if browser_path:
        ok = os.path.isfile(browser_path) and os.access(browser_path, os.X_OK)
        return None if ok else f"BROWSER_PATH={browser_path!r} is not an executable file"
    if _find_browser() is None:
        return "no Chrome/Chromium browser was found"
    return None


@contextlib.contextmanager
def static_export() -> Iterator[bool]:
    """Keep one browser open for many :func:`save_figure` calls; yields whether export works.

    Without it every PNG starts and stops Chrome (about 2-3 s each); inside it, about 0.2 s.

    >>> with static_export():                                            # doctest: +SKIP
    ...     for name, fig in figures.items():
    ...         save_figure(fig, out / name)
    """
    started = False
    if static_export_problem() is None:
        import kaleido

        try:
            kaleido.start_sync_server(silence_warnings=True)
            started = True
        except Exception as err:  # no server (old kaleido, broken browser): one browser per call
            logger.debug("could not start a kaleido server: %s", err)
    try:
        yield started
    finally:
        if started:
            kaleido.stop_sync_server(silence_warnings=True)


def _figure_paths(path: Path, formats: Sequence[str]) -> dict[str, Path]:
    """``figures/norms`` or ``figures/norms.png`` -> ``{"html": figures/norms.html, ...}``."""
    allowed = ("html", *STATIC_FORMATS)
    for fmt in formats:
        if fmt not in allowed:
            raise UnlearnInterpError(f"figure format {fmt!r} is not one of {allowed}")
    if path.suffix.lstrip(".") in allowed:
        path = path.with_suffix("")
    return {fmt: path.parent / f"{path.name}.{fmt}" for fmt in dict.fromkeys(formats)}


def save_figure(
    fig: go.Figure,
    path: str | os.PathLike,
    formats: Sequence[str] = ("html", "png"),
    *,
    scale: float | int = 2,
    strict: bool = False,
) -> list[Path]:
    """Write ``fig`` as self-contained HTML and, where static export works, PNG/SVG/PDF.

    ``path`` is the file stem (a known suffix such as ``.png`` is dropped). The HTML embeds
    plotly.js, so it opens offline. Static formats need kaleido >= 1 and Chrome/Chromium; when
    either is missing (or the export fails) the static files are skipped with one logged
    warning saying how to enable them, or, with ``strict=True``, :class:`UnlearnInterpError`
    with that sentence. Every file is written atomically. Returns the paths written.

    >>> save_figure(fig, "figures/layer_norms")                          # doctest: +SKIP
    [PosixPath('figures/layer_norms.html'), PosixPath('figures/layer_norms.png')]
    """
    targets = _figure_paths(Path(path), formats)
    written = []
    if "html" in targets:
        with atomic_path(targets["html"]) as tmp:
            fig.write_html(
                tmp, include_plotlyjs=True, full_html=True, config={"displaylogo": False}
            )
        written.append(targets["html"])
    static = {fmt: p for fmt, p in targets.items() if fmt != "html"}
    problem = static_export_problem() if static else None
    for fmt, target in static.items() if problem is None else ():
        try:
            image = _to_image(fig, fmt, scale)
        except Exception as err:  # kaleido/browser failures have no common base class
            problem = f"the export failed with {type(err).__name__}: {str(err).strip()[:200]}"
            break
        with atomic_path(target) as tmp:
            tmp.write_bytes(image)
        written.append(target)
    if problem is not None:
        _report_static_problem(problem, sorted(static), strict=strict)
    return written


def _to_image(fig: go.Figure, fmt: str, scale: float | int) -> bytes:
    with warnings.catch_warnings():  # plotly passes kaleido options a running server ignores
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")
        return pio.to_image(fig, format=fmt, scale=scale)


def _report_static_problem(problem: str, formats: list[str], *, strict: bool) -> None:
    sentence = (
        f"Skipped {'/'.join(formats).upper()} export because {problem}; {ENABLE_STATIC_HINT}."
    )
    if strict:
        raise UnlearnInterpError(sentence)
    if sentence not in _WARNED:
        _WARNED.add(sentence)
        logger.warning(sentence)
