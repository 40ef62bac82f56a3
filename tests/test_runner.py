"""The runner: order, manifest, skip when unchanged, --force, failures, and steps killed midway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from platypus_nb.runner import RunnerError, run_pipeline, select_steps, discover_steps

PARAMS = 'config = "tiny"\nrun_dir = None\noverrides = {}\n'


def make_notebook(path, body: str) -> None:
    cells = [new_code_cell(PARAMS, metadata={"tags": ["parameters"]}),
             new_code_cell("from pathlib import Path\nfrom platypus_nb.stages import open_stage\n"
                           f"stage = open_stage({path.stem!r}, config, run_dir, overrides)\n" + body)]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.write(nb, str(path))


@pytest.fixture
def project(tmp_path):
    """Two tiny notebooks and a config whose runs go to tmp_path."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    make_notebook(nbs / "01_first.ipynb", '(stage.out_dir / "a.txt").write_text(str(stage.cfg.run.seed))\n')
    make_notebook(nbs / "02_second.ipynb",
                  'a = (stage.output_of("01_first") / "a.txt").read_text()\n'
                  '(stage.out_dir / "b.txt").write_text(a + "!")\n')
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"run:\n  name: t\n  runs_dir: {tmp_path / 'runs'}\n  figures_dir: {tmp_path / 'figs'}\n")
    return tmp_path, nbs, cfg


def test_runs_in_order_records_manifest_then_skips(project):
    tmp, nbs, cfg = project
    manifest = run_pipeline(cfg, notebooks_dir=nbs, progress=False)
    run_dir = tmp / "runs" / "t"
    assert (run_dir / "02_second" / "b.txt").read_text() == "42!"
    steps = manifest["steps"]
    assert [steps[s]["status"] for s in ("01_first", "02_second")] == ["completed", "completed"]
    assert steps["02_second"]["outputs"]["b.txt"]["sha256"]
    assert (run_dir / "notebooks" / "02_second.ipynb").is_file()
    on_disk = json.loads((run_dir / "manifest.json").read_text())
    assert on_disk["config"]["run"]["name"] == "t" and on_disk["packages"]["torch"].startswith("2.13.0")
    assert on_disk["data"]["mmlu_test.jsonl.gz"] and on_disk["steps"]["01_first"]["duration_s"] > 0

    started = {s: steps[s]["started"] for s in steps}
    again = run_pipeline(cfg, notebooks_dir=nbs, progress=False)
    assert {s: again["steps"][s]["started"] for s in started} == started  # nothing re-ran
    assert all("skipped_at" in again["steps"][s] for s in started)


def test_config_change_reruns_and_force_reruns(project):
    tmp, nbs, cfg = project
    first = run_pipeline(cfg, notebooks_dir=nbs, progress=False)["steps"]["01_first"]["started"]
    time.sleep(1.1)
    changed = run_pipeline(cfg, notebooks_dir=nbs, progress=False, overrides=["run.seed=7"])
    assert changed["steps"]["01_first"]["started"] != first
    assert (tmp / "runs" / "t" / "02_second" / "b.txt").read_text() == "7!"
    time.sleep(1.1)
    forced = run_pipeline(cfg, notebooks_dir=nbs, progress=False, overrides=["run.seed=7"], force=True,
                          steps=["02"])
    assert forced["steps"]["02_second"]["started"] != changed["steps"]["02_second"]["started"]
    assert forced["steps"]["01_first"]["started"] == changed["steps"]["01_first"]["started"]


def test_tampered_output_is_rerun(project):
    tmp, nbs, cfg = project
    first = run_pipeline(cfg, notebooks_dir=nbs, progress=False)
    (tmp / "runs" / "t" / "01_first" / "a.txt").write_text("tampered")
    time.sleep(1.1)
    again = run_pipeline(cfg, notebooks_dir=nbs, progress=False)
    assert again["steps"]["01_first"]["started"] != first["steps"]["01_first"]["started"]
    assert (tmp / "runs" / "t" / "01_first" / "a.txt").read_text() == "42"


def test_failed_step_stops_the_run_naming_notebook_and_error(project):
    tmp, nbs, cfg = project
    make_notebook(nbs / "01_first.ipynb", 'raise ValueError("bad row 17")\n')
    with pytest.raises(RunnerError, match=r"step 01_first failed: ValueError: bad row 17[\s\S]*01_first\.ipynb"):
        run_pipeline(cfg, notebooks_dir=nbs, progress=False)
    manifest = json.loads((tmp / "runs" / "t" / "manifest.json").read_text())
    assert manifest["steps"]["01_first"]["status"] == "failed"
    assert "02_second" not in manifest["steps"]


def test_step_killed_midway_is_not_taken_as_finished(project):
    tmp, nbs, cfg = project
    make_notebook(nbs / "01_first.ipynb", 'import time\n(stage.out_dir / "started").touch()\ntime.sleep(120)\n')
    code = ("from platypus_nb.runner import run_pipeline; from pathlib import Path; "
            f"run_pipeline({str(cfg)!r}, notebooks_dir=Path({str(nbs)!r}), progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    started = tmp / "runs" / "t" / "01_first" / "started"
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert started.exists()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads((tmp / "runs" / "t" / "manifest.json").read_text())
    assert manifest["steps"]["01_first"]["status"] == "running"

    make_notebook(nbs / "01_first.ipynb", '(stage.out_dir / "a.txt").write_text("done")\n')
    resumed = run_pipeline(cfg, notebooks_dir=nbs, progress=False)
    assert resumed["steps"]["01_first"]["status"] == "completed"
    assert resumed["steps"]["02_second"]["status"] == "completed"


def test_unknown_step_lists_known_ones(project):
    _, nbs, _ = project
    with pytest.raises(RunnerError, match="unknown step '07' .*01_first, 02_second"):
        select_steps(discover_steps(nbs), ["07"])
