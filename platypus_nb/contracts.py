"""What each stage writes and reads, declared once: the runner's lineage rule and the training-rows schema.

The runner (``platypus_nb.runner``) uses :data:`STAGES` to decide which earlier steps a step depends on (a step
runs only when each of them is completed under the current config, see docs/reliability.md), to record the sha256
of every input file a step read, and to check that a finished notebook wrote its declared outputs.
:meth:`platypus_nb.stages.Stage.output_of` refuses to read a stage that is not declared here, so the declarations
cannot drift from what the notebooks do.

Training rows (step 01's ``open_platypus.jsonl``, step 02's ``clean.jsonl``, a user's own JSONL) are read by steps
02, 03 and 04 through :func:`read_training_rows`: one reader, one rule, one error style (file, line, key,
expectation); :func:`question_text` is the one text of a row that any stage embeds. The vendored benchmark splits
in ``data/`` that stages read (test sets, validation splits) have one reader too,
:func:`platypus_nb.benchmarks_data.read_benchmark`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from platypus_nb.io import iter_jsonl


@dataclass(frozen=True)
class Read:
    """Files of an earlier stage that a stage reads: glob patterns relative to that stage's output folder."""

    stage: str
    files: tuple[str, ...] = ("*",)

    def matches(self, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, pattern) for pattern in self.files)


@dataclass(frozen=True)
class StageContract:
    """A stage's output folder (inside ``runs/<run>/``), the files it must write there, and what it reads."""

    out_dir: str
    outputs: tuple[str, ...] = ()
    reads: tuple[Read, ...] = ()


# The list of models step 04 writes and step 05 evaluates, each with the model it is compared with.
MODELS_JSON = "models.json"

# Notebook file stem -> contract. Files are relative to the stage's output folder.
STAGES: dict[str, StageContract] = {
    "00_setup": StageContract("00_setup"),
    "01_dataset_construction": StageContract(
        "01_dataset", ("open_platypus.jsonl", "removed.csv", "composition.csv", "summary.json")),
    "02_contamination_analysis": StageContract(
        "02_contamination", ("clean.jsonl", "heldout.jsonl", "flagged.csv", "summary.json", "README.md"),
        (Read("01_dataset_construction", ("open_platypus.jsonl",)),)),
    "03_finetune": StageContract(
        "03_finetune", ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "metrics.json",
                        "train_args.json"),
        (Read("02_contamination_analysis", ("clean.jsonl",)),)),
    "04_merge": StageContract(
        "04_merge", (MODELS_JSON, "merge_report.json", "overlap.csv"),
        (Read("03_finetune", ("adapter/*",)), Read("02_contamination_analysis", ("clean.jsonl",)))),
    # models.json and the merged model folders it lists; step 03's adapter when step 04 did not run; step 02's
    # held-out rows, never trained on, for the held-out loss.
    "05_evaluate": StageContract(
        "05_evaluate", ("summary.csv", "heldout_loss.csv"),
        (Read("04_merge", ("*",)), Read("03_finetune", ("adapter/*",)),
         Read("02_contamination_analysis", ("heldout.jsonl",)))),
    "06_results": StageContract(
        "06_results", ("paper_deltas.csv", "run_deltas.csv", "heldout_deltas.csv"),
        (Read("05_evaluate", ("summary.csv", "*.samples.jsonl", "heldout_loss.csv")),
         Read("04_merge", ("overlap.csv",)))),
}


def out_dir_name(stem: str, contracts: Mapping[str, StageContract] = STAGES) -> str:
    """The output folder of a stage; a notebook without a contract writes to a folder named like itself."""
    contract = contracts.get(stem)
    return contract.out_dir if contract else stem


def reads_of(stem: str, earlier: Sequence[str], contracts: Mapping[str, StageContract] = STAGES) -> tuple[Read, ...]:
    """What a stage reads. A notebook without a contract is taken to read every earlier stage (the safe guess)."""
    contract = contracts.get(stem)
    if contract is None:
        return tuple(Read(s) for s in earlier)
    return contract.reads


def missing_outputs(stem: str, out_dir: Path, contracts: Mapping[str, StageContract] = STAGES) -> list[str]:
    """Declared outputs a finished stage did not write."""
    contract = contracts.get(stem)
    return [rel for rel in (contract.outputs if contract else ()) if not (out_dir / rel).is_file()]


# ---------------------------------------------------------------------------------------------- training rows

# The row schema of every training-rows file: key -> (required, may be blank, what is expected). Other keys are kept
# as they are. An output may be empty because the original build kept such rows (ARB's MCAT formatter strips a
# one-sentence solution to nothing; docs/dataset.md) and trained them with EOS as the only target; step 01 keeps them
# with dataset.incomplete_as_original, so steps 02 and 03 must read them too.
TRAINING_ROW_KEYS: dict[str, tuple[bool, bool, str]] = {
    "instruction": (True, False, "a non-empty string"),
    "input": (False, True, "a string or null"),
    "output": (True, True, "a string"),
    "data_source": (False, True, "a string or null"),
}


def question_text(row: dict[str, Any]) -> str:
    """The text of a training row that is embedded and compared (near-duplicate removal in 01, contamination in 02,
    partner overlap in 04): the instruction, then a space and the input when there is one, as the original build's
    similarity notebook joined them. One function, so that every stage embeds the same string and the embedding cache
    serves them all."""
    extra = row.get("input") or ""
    return row["instruction"] + (" " + extra if extra else "")


class TrainingRowsError(ValueError):
    """A training-rows file or list cannot be used; the message names the file, line (or row) and key."""


def training_row_problem(row: Any) -> Optional[str]:
    """What is wrong with one training row under :data:`TRAINING_ROW_KEYS`, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for key, (required, may_be_blank, expected) in TRAINING_ROW_KEYS.items():
        value = row.get(key)
        if key not in row:
            if required:
                return f"missing key {key!r}: expected {expected}"
            continue
        if value is None and not required:
            continue
        if not isinstance(value, str):
            return f"{key!r} must be a string, got {type(value).__name__} {str(value)[:60]!r}"
        if not may_be_blank and not value.strip():
            return f"{key!r} is empty: expected {expected}"
    return None


def check_training_rows(rows: Iterable[Any], where: str) -> list[dict[str, Any]]:
    """Check rows given in memory; an error names ``where`` and the 1-based row."""
    rows = list(rows)
    for i, row in enumerate(rows, start=1):
        problem = training_row_problem(row)
        if problem:
            raise TrainingRowsError(f"{where}: row {i}: {problem}")
    if not rows:
        raise TrainingRowsError(f"{where}: no training rows (expected rows with instruction, input, output)")
    return rows


def read_training_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a training JSONL (``.gz`` too), checking every row before any work starts; rows are returned unchanged.

    An error names the file and the real 1-based line number (blank lines count), and for bytes that are not UTF-8
    the column (:func:`platypus_nb.io.iter_jsonl`).
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingRowsError(f"training file {path} does not exist (expected JSONL rows with instruction, input, "
                                f"output, as step 01 writes them)")
    rows = []
    try:
        for lineno, row in iter_jsonl(path):
            problem = training_row_problem(row)
            if problem:
                raise TrainingRowsError(f"{path}: line {lineno}: {problem}")
            rows.append(row)
    except TrainingRowsError:
        raise
    except ValueError as e:  # not UTF-8, not JSON, not an object: already names the file and line
        raise TrainingRowsError(str(e)) from None
    if not rows:
        raise TrainingRowsError(f"{path}: no training rows (expected JSONL rows with instruction, input, output)")
    return rows
