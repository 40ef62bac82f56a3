"""The runner: order, manifest, skip when unchanged, --force, failures, steps killed midway, lineage, the run lock,
integrity (--verify, temporaries), and clear errors when the manifest cannot be read or written."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from platypus_nb.runner import RunnerError, discover_steps, run_pipeline, select_steps

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


def test_force_reaches_a_notebook_that_declares_it(project):
    """--force is passed as the ``force`` parameter to a step that keeps state of its own (03's checkpoints)."""
    tmp, nbs, cfg = project
    cells = nbformat.read(str(nbs / "02_second.ipynb"), as_version=4)
    cells.cells[0].source += "force = False\n"
    cells.cells[1].source += '(stage.out_dir / "forced.txt").write_text(str(force))\n'
    nbformat.write(cells, str(nbs / "02_second.ipynb"))
    run_pipeline(cfg, notebooks_dir=nbs, progress=False)
    assert (tmp / "runs" / "t" / "02_second" / "forced.txt").read_text() == "False"
    forced = run_pipeline(cfg, notebooks_dir=nbs, progress=False, force=True)
    assert (tmp / "runs" / "t" / "02_second" / "forced.txt").read_text() == "True"
    assert forced["steps"]["02_second"]["parameters"]["force"] is True
    assert "force" not in forced["steps"]["01_first"]["parameters"]


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


def start_a_run_that_sleeps_in_step_01(project) -> subprocess.Popen:
    """A ``run_pipeline`` in another process (its own session, to kill with the kernel), inside step 01."""
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
    return proc


def test_step_killed_midway_is_not_taken_as_finished(project):
    tmp, nbs, cfg = project
    proc = start_a_run_that_sleeps_in_step_01(project)
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


# ------------------------------------------------------------------------------------------------ lineage


def test_a_step_never_runs_on_the_outputs_of_a_stale_step_and_records_its_input_hashes(project):
    tmp, nbs, cfg = project
    run = run_pipeline(cfg, notebooks_dir=nbs, progress=False)
    assert run["steps"]["02_second"]["inputs"] == {"01_first": {"a.txt": hashlib.sha256(b"42").hexdigest()}}

    # Step 01 breaks (or is killed) under a new config: its old output is still on disk.
    make_notebook(nbs / "01_first.ipynb", 'raise RuntimeError("killed")\n')
    with pytest.raises(RunnerError, match="step 01_first failed"):
        run_pipeline(cfg, notebooks_dir=nbs, progress=False, overrides=["run.seed=7"], steps=["01"])
    for seed in ("7", "42"):
        with pytest.raises(RunnerError, match=r"step 02_second reads the outputs of 01_first, which is not completed "
                                              r"under the current config \(its last run is recorded as 'failed'\); "
                                              r"run it first: --steps 01,02"):
            run_pipeline(cfg, notebooks_dir=nbs, progress=False, overrides=[f"run.seed={seed}"], steps=["02"])
    assert (tmp / "runs" / "t" / "02_second" / "b.txt").read_text() == "42!"  # not recomputed from stale 42

    # Running both in one invocation is the cure.
    make_notebook(nbs / "01_first.ipynb", '(stage.out_dir / "a.txt").write_text(str(stage.cfg.run.seed))\n')
    run = run_pipeline(cfg, notebooks_dir=nbs, progress=False, overrides=["run.seed=7"], steps=["01", "02"])
    assert (tmp / "runs" / "t" / "02_second" / "b.txt").read_text() == "7!"
    assert run["steps"]["02_second"]["inputs"]["01_first"]["a.txt"] == hashlib.sha256(b"7").hexdigest()


def test_a_config_change_alone_makes_the_upstream_stale(project):
    tmp, nbs, cfg = project
    run_pipeline(cfg, notebooks_dir=nbs, progress=False, steps=["01"])
    with pytest.raises(RunnerError, match=r"02_second reads the outputs of 01_first, which is not completed under the "
                                          r"current config \(its config changed \(run.seed: 42 -> 7\)\)"):
        run_pipeline(cfg, notebooks_dir=nbs, progress=False, overrides=["run.seed=7"], steps=["02"])


def test_the_real_stages_declare_reads_of_earlier_notebooks_only():
    from platypus_nb.contracts import STAGES

    stems = [s.stem for s in discover_steps()]
    assert set(STAGES) == set(stems)
    for stem, contract in STAGES.items():
        assert all(read.stage in stems and read.stage < stem for read in contract.reads), stem
    for step in discover_steps():  # what each notebook asks for, read from its cells, is declared
        asked = set(re.findall(r'output_of\(\\?"(\w+)\\?"\)', step.notebook.read_text()))
        assert asked <= {r.stage for r in STAGES[step.stem].reads}, step.stem


def test_a_notebook_reading_an_undeclared_stage_is_refused(tmp_path):
    from platypus_nb.stages import open_stage

    stage = open_stage("03_finetune", "tiny", str(tmp_path / "run"), {"run.figures_dir": str(tmp_path / "f")})
    assert stage.output_of("02_contamination_analysis") == tmp_path / "run" / "02_contamination"
    with pytest.raises(ValueError, match="stage 03_finetune reads the outputs of 01_dataset_construction, which "
                                         "platypus_nb/contracts.py does not declare"):
        stage.output_of("01_dataset_construction")


def test_a_step_that_does_not_write_its_declared_outputs_fails(project):
    from platypus_nb.contracts import StageContract

    tmp, nbs, cfg = project
    contracts = {"01_first": StageContract("01_first", ("a.txt", "model/weights.bin"))}
    with pytest.raises(RunnerError, match=r"step 01_first failed: .*declared output\(s\) model/weights.bin"):
        run_pipeline(cfg, notebooks_dir=nbs, progress=False, steps=["01"], contracts=contracts)
    manifest = json.loads((tmp / "runs" / "t" / "manifest.json").read_text())
    assert manifest["steps"]["01_first"]["status"] == "failed"


# --------------------------------------------------------------------------------------------------- lock


def test_a_second_run_on_the_same_folder_is_refused_naming_the_holder(project):
    tmp, nbs, cfg = project
    proc = start_a_run_that_sleeps_in_step_01(project)
    try:
        with pytest.raises(RunnerError, match=rf"run folder .*runs/t is in use by another platypus-nb run \(pid "
                                              rf"{proc.pid} on host {socket.gethostname()}, started 20"):
            run_pipeline(cfg, notebooks_dir=nbs, progress=False)
        manifest = json.loads((tmp / "runs" / "t" / "manifest.json").read_text())
        assert manifest["steps"]["01_first"]["status"] == "running"  # the holder's record is untouched
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    from platypus_nb.runner import run_lock

    with run_lock(tmp / "runs" / "t"):  # a killed holder's lock is gone with its process
        pass


# ---------------------------------------------------------------------------------------------- integrity


def test_temporaries_are_never_outputs_and_are_cleaned_before_the_step_runs(project):
    tmp, nbs, cfg = project
    stage_dir = tmp / "runs" / "t" / "01_first"
    killed = stage_dir / ".platypus.k2j4l1.partial"  # what a killed atomic_directory leaves
    killed.mkdir(parents=True)
    (killed / "model.safetensors").write_bytes(b"\0" * 4096)
    (stage_dir / ".a.txt.x8y9.tmp").write_text("half")
    make_notebook(nbs / "01_first.ipynb", '(stage.out_dir / "a.txt").write_text("42")\n'
                                          'scratch = stage.out_dir / ".merged.q1w2.partial"\n'
                                          'scratch.mkdir()\n(scratch / "model.safetensors").write_text("in flight")\n')
    run = run_pipeline(cfg, notebooks_dir=nbs, progress=False, steps=["01"])
    assert list(run["steps"]["01_first"]["outputs"]) == ["a.txt"]
    assert not killed.exists() and not (stage_dir / ".a.txt.x8y9.tmp").exists()


def test_verify_rehashes_outputs_that_kept_their_size_and_mtime(project):
    tmp, nbs, cfg = project
    first = run_pipeline(cfg, notebooks_dir=nbs, progress=False, steps=["01"])["steps"]["01_first"]["started"]
    out = tmp / "runs" / "t" / "01_first" / "a.txt"
    st = out.stat()
    out.write_text("43")  # same size
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    skipped = run_pipeline(cfg, notebooks_dir=nbs, progress=False, steps=["01"])
    assert skipped["steps"]["01_first"]["started"] == first and out.read_text() == "43"  # the fast check's limit
    time.sleep(1.1)
    verified = run_pipeline(cfg, notebooks_dir=nbs, progress=False, steps=["01"], verify=True)
    assert verified["steps"]["01_first"]["started"] != first and out.read_text() == "42"


# ------------------------------------------------------------------------------------------------ manifest


def test_a_corrupt_manifest_is_set_aside_by_force_as_the_error_says(project):
    tmp, nbs, cfg = project
    path = tmp / "runs" / "t" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"steps": {"01_first": ')
    with pytest.raises(RunnerError, match=r"manifest.json is not a valid manifest .*rerun with --force to move it "
                                          r"aside \(to manifest.json.corrupt-"):
        run_pipeline(cfg, notebooks_dir=nbs, progress=False, steps=["01"])
    run = run_pipeline(cfg, notebooks_dir=nbs, progress=False, steps=["01"], force=True)
    assert run["steps"]["01_first"]["status"] == "completed"
    aside = list(path.parent.glob("manifest.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"steps": {"01_first": '
    assert json.loads(path.read_text())["previous_manifest"] == str(aside[0])


def test_a_full_disk_while_writing_the_manifest_is_one_line_and_leaves_the_old_one(project, monkeypatch, capsys):
    from platypus_nb import cli, runner
    from platypus_nb.io import atomic_path

    tmp, nbs, cfg = project
    run_dir = tmp / "runs" / "t"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text('{"steps": {}}\n')

    def full_disk(path, obj):
        with atomic_path(path) as part:
            part.write_text('{"half": ')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runner, "atomic_write_json", full_disk)
    assert cli.main(["run", "--config", str(cfg), "--steps", "00", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot write {run_dir / 'manifest.json'}: No space left on device (ENOSPC); the previous manifest is " \
           f"unchanged" in err
    assert (run_dir / "manifest.json").read_text() == '{"steps": {}}\n'
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "manifest.json"]


def _make_read_only(folder) -> str:
    """chmod for ordinary users; root ignores modes, so the immutable attribute (if this file system has it)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return "chmod"
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return "chattr"
    pytest.skip("running as root on a file system without the immutable attribute: cannot make a folder read-only")


def test_a_read_only_run_folder_is_one_clear_error(project):
    tmp, nbs, cfg = project
    run_dir = tmp / "runs" / "t"
    run_dir.mkdir(parents=True)
    manifest = '{"steps": {}}\n'
    (run_dir / "manifest.json").write_text(manifest)
    how = _make_read_only(run_dir)
    try:
        with pytest.raises(RunnerError, match=r"cannot (create the lock file|write) .*runs/t/(\.lock|manifest\.json): "
                                              r"(Permission denied|Operation not permitted)"):
            run_pipeline(cfg, notebooks_dir=nbs, progress=False)
    finally:
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(run_dir)], check=True)
        run_dir.chmod(0o755)
    assert (run_dir / "manifest.json").read_text() == manifest
