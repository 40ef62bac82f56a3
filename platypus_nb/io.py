"""File helpers every stage shares: hashes, atomic writes, JSONL with line-numbered errors.

Why atomic: a stage killed midway must never leave a file (or model folder) that looks complete, because the
runner and the next stage trust what exists. Everything is written to a temporary sibling and renamed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) so that large weights are hashed once per process; Hub
    cache blobs are named by it already (LFS oid)."""
    resolved = Path(path).resolve()
    if resolved.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", resolved.name):
        return resolved.name
    st = resolved.stat()
    key = (str(resolved), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(resolved)
    return _FILE_HASHES[key]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def open_text(path: str | Path):
    """Open a text file, transparently decompressing ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of each non-blank line of a JSONL file (``.gz`` too).

    Lines are decoded one by one so that every error (not UTF-8, not JSON, not an object) is a ValueError naming
    the file and the real 1-based line number, blank lines counted.
    """
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: line {lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                 f"{e.start + 1}); expected UTF-8 text") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a bad line raises ValueError naming the file and the 1-based line number."""
    return [row for _, row in iter_jsonl(path)]


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place when complete.

    An existing ``path`` is replaced only after the new one is fully written; an exception leaves no trace.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# What atomic_path and atomic_directory leave behind when a process is killed before the rename.
_TEMPORARY = re.compile(r"\..+\.(tmp|partial|old)")


def is_temporary(rel: str | Path) -> bool:
    """Whether a path (relative to an output folder) lies in, or is, a hidden file or folder: a temporary of the
    atomic writers above, or editor state (``.ipynb_checkpoints``); never a stage's output."""
    return any(part.startswith(".") for part in Path(rel).parts)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete what killed atomic writes left under ``folder`` (``.<name>.*.tmp``, ``.<name>.*.partial``,
    ``.<name>.old``); return what was removed. Only safe while no other process writes there (the run lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob(".*") if _TEMPORARY.fullmatch(p.name)]
    removed = []
    for p in sorted(stale, key=lambda p: len(p.parts)):
        if any(r in p.parents for r in removed):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def changed_file(folder: str | Path, digests: dict[str, str]) -> Optional[str]:
    """The first file of ``digests`` (relative path -> sha256) that is missing under ``folder`` or hashes otherwise
    (truncated or altered); None when all are as recorded. How cached models are verified before reuse."""
    folder = Path(folder)
    for rel, digest in digests.items():
        path = folder / rel
        if not path.is_file() or sha256_file(path) != digest:
            return rel
    return None


def read_csv_checked(path: str | Path, columns: list[str], missing_hint: str):
    """Read a CSV into pandas, failing with the file's name when it is absent or lacks a required column."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {missing_hint}")
    table = pd.read_csv(path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(columns)})")
    return table
