"""``write_report``: every table (``analysis``) and figure (``plots``) of a list of runs, written into a folder.

Apart from both: plots builds on analysis, and what writes the two together sits above them.
"""

from __future__ import annotations

import glob
from pathlib import Path

from . import analysis, plots
from .errors import KitError
from .records import Run


def write_report(runs: list[Run], out_dir, published: bool = True, benchmarks=()) -> dict[str, Path]:
    """Every figure (PNG) and table (CSV) of ``runs``, and a figure per benchmark CSV in ``benchmarks`` (paths or
    glob patterns as ``plots.find_benchmarks`` takes them, or one pattern), into ``out_dir``; returns the written
    files by name. What the CLI's ``report`` and the analysis notebook write.

    Every run's files are read and checked first, and a benchmark named as a path must exist, so bad input stops
    the report before anything is written."""
    for run in runs:
        run.check()
    benchmarks = [benchmarks] if isinstance(benchmarks, (str, Path)) else list(benchmarks)  # one pattern, or a list
    missing = [str(b) for b in benchmarks if not glob.has_magic(str(b)) and not Path(b).is_file()]
    if missing:
        raise KitError(f"benchmark CSV {missing[0]} not found; expected a CSV written by benchmarks/bench.py")
    figures = {**plots.figures(runs, published), **plots.benchmark_figures(plots.find_benchmarks(list(benchmarks)))}
    written = plots.save_figures(figures, out_dir) + analysis.save_tables(analysis.tables(runs, published), out_dir)
    return {path.name: path for path in written}
