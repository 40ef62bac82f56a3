"""The two kinds of plain record the build passes along: a dataset row and the note of a row's removal.

A row is ``{row_id, source, instruction, input, output, data_source}``; ``row_id`` is ``"<source>:<n>"`` with ``n``
the record's 0-based position in what the source loaded, so every removal and every kept row can be traced back
to the source record it came from. Only ``instruction, input, output, data_source`` go into the training file.
"""

from __future__ import annotations

from typing import Any, Optional

# The build's steps, in order; composition.csv has a column for what is left after each.
STEPS = ("format", "keyword_filter", "incomplete", "exact_dedup", "near_dedup")
TRAINING_FIELDS = ("instruction", "input", "output", "data_source")
REMOVED_COLUMNS = ("row_id", "source", "step", "reason", "duplicate_of", "similarity", "detail", "instruction")


class BadRowError(ValueError):
    """A source record that does not fit the source's schema (with on_bad_row: stop, the build fails on it)."""


def row_id(source: str, index: int) -> str:
    return f"{source}:{index}"


def make_row(source: str, index: int, data_source: str, instruction: Any, input: Any, output: Any) -> dict[str, Any]:
    return {"row_id": row_id(source, index), "source": source, "instruction": instruction, "input": input,
            "output": output, "data_source": data_source}


def removal(row_id: str, source: str, step: str, reason: str, *, detail: str = "", duplicate_of: str = "",
            similarity: Optional[float] = None, instruction: Any = "") -> dict[str, Any]:
    """One line of removed.csv: which row, at which step, why, and (for duplicates) which kept row it repeats."""
    preview = instruction if isinstance(instruction, str) else ("" if instruction is None else str(instruction))
    return {"row_id": row_id, "source": source, "step": step, "reason": reason, "duplicate_of": duplicate_of,
            "similarity": similarity, "detail": detail, "instruction": preview[:200]}


def training_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in TRAINING_FIELDS}
