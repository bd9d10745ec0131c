"""``write_report``: every table (``analysis``) and figure (``plots``) of a list of runs, written into a folder;
``write_html``: the same as one HTML file to share, the analysis notebook executed and converted.

Apart from both: plots builds on analysis, and what writes the two together sits above them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from pathlib import Path

from . import analysis, plots
from .atomic import write_text_atomic
from .errors import KitError
from .records import Run

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = PACKAGE_ROOT / "notebooks" / "analysis.ipynb"
HTML = "report.html"
NOT_IN_REPORT = "not-in-report"  # the analysis notebook's cell tag for cells the HTML leaves out (written files)


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


@contextlib.contextmanager
def _kernel_imports_this_kit():
    """The notebook's kernel imports this copy of the kit: the environment it inherits (papermill takes none)
    names it first on PYTHONPATH, whatever copy is installed."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), before]))
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def write_html(runs: list[Run], out_dir, benchmarks=()) -> Path:
    """``<out_dir>/report.html``: the analysis notebook executed by papermill over ``runs`` (it writes the figures
    and tables into ``out_dir`` as ``write_report`` does), then converted by nbconvert without its code: figures
    embedded as data URIs, tables, the runs' configurations, the FlagPerf comparison. One file to share.

    The executed notebook is kept in a temporary folder only: the HTML is what is shared."""
    import papermill
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    for run in runs:
        run.check()
    if not NOTEBOOK.is_file():
        raise KitError(f"{NOTEBOOK} not found; the HTML report executes the analysis notebook of a kit checkout")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    benchmarks = [benchmarks] if isinstance(benchmarks, (str, Path)) else list(benchmarks)
    parameters = {
        # absolute paths: the kernel's working directory need not be this one
        "runs": [str(run.folder.absolute()) for run in runs],
        "out_dir": str(out.absolute()),
        "benchmarks": [str(Path(b).absolute()) for b in benchmarks],
        "paired": [],
        "html": False,  # the executed copy does not convert itself again
    }
    with tempfile.TemporaryDirectory() as tmp, _kernel_imports_this_kit():
        try:
            nb = papermill.execute_notebook(
                str(NOTEBOOK),
                str(Path(tmp) / "analysis.ipynb"),
                parameters=parameters,
                kernel_name="python3",
                progress_bar=False,
            )
        except papermill.PapermillExecutionError as e:
            raise KitError(f"the analysis notebook stopped at cell {e.exec_count}: {e.ename}: {e.evalue}") from None
    for cell in nb.cells:  # library warnings on stderr (tqdm's, at import) are not the report's; errors stop above
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
    exporter = HTMLExporter(
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True, embed_images=True
    )
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={NOT_IN_REPORT}), enabled=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": "distil-kit report"}})
    # The template links require.js and MathJax from a CDN, for widgets and math this report has none of: without
    # them the file needs nothing else, offline too.
    body = re.sub(r'<script src="https?://[^"]*">\s*</script>\s*', "", body)
    return write_text_atomic(out / HTML, body)
