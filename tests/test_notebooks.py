"""Every notebook is stored clean and exposes the same parameters interface; notebook 00 runs headless."""

from __future__ import annotations

import json

import pytest

from platypus_nb.paths import NOTEBOOKS_DIR
from platypus_nb.runner import discover_steps, execute_notebook

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def test_there_are_notebooks_starting_with_setup():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_setup.ipynb"
    assert [s.notebook for s in discover_steps()] == NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_interface(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["cells"][0]["cell_type"] == "markdown", "a notebook opens with the story, in markdown"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    source = "".join(tagged[0]["source"])
    for name in ("config = ", "run_dir = ", "overrides = "):
        assert name in source, f"{path.name}: parameters cell lacks {name.strip()}"


@pytest.mark.slow
def test_setup_notebook_runs_on_the_real_model(tmp_path, figures_override):
    out = tmp_path / "00_setup.ipynb"
    execute_notebook(NOTEBOOKS_DIR / "00_setup.ipynb", out,
                     {"config": "tiny", "run_dir": str(tmp_path / "run"), "overrides": figures_override})
    text = json.dumps(json.loads(out.read_text())["cells"])
    assert "Paris" in text  # the base model answered through its chat template
    assert (tmp_path / "run" / "00_setup").is_dir()
