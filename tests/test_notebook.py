"""The comparison notebook runs top to bottom (tiny budget)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "compare_policies.ipynb"


def test_compare_policies_notebook_executes(monkeypatch, tmp_path):
    monkeypatch.setenv("NB_SEEDS", "1")
    monkeypatch.setenv("NB_DURATION_S", "300")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent.parent)}}
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2
    assert os.environ["NB_SEEDS"] == "1"
