"""docs/tutorial.ipynb runs top to bottom (nbclient) on a tiny model, and its figures display offline."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "tutorial.ipynb"
REMOTE = re.compile(r"<(script|link|img)[^>]+(src|href)=.https?:")  # anything loaded from a host


@pytest.mark.slow
def test_tutorial_executes_and_displays_offline(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("HEADKIT_TUTORIAL_RUN", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    started = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    elapsed = time.perf_counter() - started
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    data = [o.get("data", {}) for o in outputs if o.output_type in ("display_data", "execute_result")]
    plotly = [d for d in data if "application/vnd.plotly.v1+json" in d]
    assert len(plotly) == 2  # head census and patching, both drawn inline
    assert all("text/html" in d and "Plotly.newPlot" in d["text/html"] for d in plotly)
    views = [d["text/html"] for d in data if "headkit-attention" in d.get("text/html", "")]
    assert len(views) == 1 and "var CircuitsVis" in views[0] and "[q]" in views[0]  # bundle inlined
    html = [d["text/html"] for d in data if "text/html" in d]
    assert not [h for h in html if REMOTE.search(h)]
    assert list(tmp_path.iterdir()) == []  # its tiny model went to a temporary folder, not where it ran (issue 19)
    print(f"tutorial executed in {elapsed:.1f} s")  # noqa: T201 (shown with -s)


def test_notebook_is_committed_without_outputs():
    """Outputs (plotly.js and the circuitsvis bundle, ~11 MB once run) are not stored in the repository (issue 19)."""
    import json

    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)
    assert NOTEBOOK.stat().st_size < 50_000
    source = "".join(line for cell in code for line in cell["source"])
    assert "tempfile.mkdtemp(" in source and "tutorial-run" not in source  # trains into a temporary folder
