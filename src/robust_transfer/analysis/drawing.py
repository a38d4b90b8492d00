"""Drawing and saving a document's figures, on several CPUs where the platform forks.

Figures are most of the report's time (Agg rendering, PNG and SVG writing), and each is
independent of the others, so they are drawn in worker processes when there are several
CPUs and several figures. The workers are forked: they inherit the figures' data and
drawing functions, so nothing is pickled but the figure's index and the written paths.
Where ``fork`` is not available (Windows, macOS's default) or with one CPU, they are drawn
here, one after another; the files are the same either way.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from robust_transfer.analysis import plots
from robust_transfer.analysis.document import Document, Figure
from robust_transfer.io import safe_filename

Paths = dict[str, Path]
MIN_PARALLEL = 4  # fewer figures than this are drawn here: a worker costs ~0.1 s to start
_JOBS: list[Callable[[], Paths | None]] = []  # what forked workers run, by index


def save_figures(doc: Document, directory: Path, workers: int | None = None
                 ) -> dict[str, Paths]:
    """Draw and save every figure of ``doc`` under ``directory``.

    Args:
        doc: the document; its figures are drawn (``draw``) or copied (``png``).
        directory: where ``<key>.<format>`` files go (created).
        workers: processes to draw in; default the CPUs this process may use.

    Returns:
        ``{figure key: {format: path}}`` of the figures written (a figure whose ``draw``
        returned ``None`` has no entry).
    """
    directory.mkdir(parents=True, exist_ok=True)
    # the costliest first (those also written as SVG), so the workers finish together
    blocks = sorted(doc.figures(), key=lambda b: -len(b.formats))
    results = run_all([partial(_save_one, b, directory) for b in blocks], workers)
    written = {b.key: paths for b, paths in zip(blocks, results, strict=True) if paths is not None}
    return {b.key: written[b.key] for b in doc.figures() if b.key in written}  # document order


def _save_one(block: Figure, directory: Path) -> Paths | None:
    if block.png is not None:
        target = directory / f"{safe_filename(block.key)}.png"
        shutil.copyfile(block.png, target)
        return {"png": target}
    figure = block.draw() if block.draw is not None else None
    if figure is None:
        return None
    return plots.save_figures(figure, directory, block.key, block.formats)


def run_all(jobs: list[Callable[[], Paths | None]], workers: int | None = None
            ) -> list[Paths | None]:
    """Each job's result, in order; run in forked workers when that can help."""
    workers = min(workers or _cpus(), len(jobs))
    if workers < 2 or len(jobs) < MIN_PARALLEL or \
            "fork" not in multiprocessing.get_all_start_methods():
        return [job() for job in jobs]
    global _JOBS
    _JOBS = jobs
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            return list(pool.map(_run, range(len(jobs))))
    finally:
        _JOBS = []


def _run(index: int) -> Paths | None:
    return _JOBS[index]()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
