"""The stage contracts' shared pieces: one training-rows reader for steps 02 and 03, and where figures go."""

from __future__ import annotations

import gzip
import re

import pytest

from platypus_nb.config import load_config
from platypus_nb.contracts import read_training_rows
from platypus_nb.finetune import TrainingDataError, load_train_rows
from platypus_nb.paths import PROJECT_ROOT

GOOD = b'{"instruction": "Add 2 and 2.", "input": "", "output": "4", "data_source": "mine"}\n'


def both_readers(path):
    """Step 02's and step 03's reader: each must fail with the same message."""
    messages = []
    for read, error in ((read_training_rows, ValueError), (load_train_rows, TrainingDataError)):
        with pytest.raises(error) as info:
            read(path)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    return messages[0]


@pytest.mark.parametrize("lines, message", [
    ([GOOD, b"\n", b'{"instruction": "caf\xe9", "output": "x"}\n'],
     r"train.jsonl: line 3: not valid UTF-8 \(byte 0xe9 at column 21\); expected UTF-8 text"),
    ([GOOD, b"\n", b"\n", b'{"instruction": "a", "output": 3}\n'], r"train.jsonl: line 4: 'output' must be a string"),
    ([GOOD, b'{"instruction": " ", "input": "b", "output": "c"}\n'],
     r"train.jsonl: line 2: 'instruction' is empty: expected a non-empty string"),
    ([b"\n", b'{"instruction": "a", "input": "x"}\n'], r"train.jsonl: line 2: missing key 'output'"),
    ([GOOD, b'{"instruction": "a", "output": "b", "data_source": 7}\n'], r"line 2: 'data_source' must be a string"),
    ([b"\n\n"], r"train.jsonl: no training rows"),
])
def test_steps_02_and_03_read_training_rows_by_one_rule(tmp_path, lines, message):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"".join(lines))
    assert re.search(message, both_readers(path)), message


def test_good_rows_read_the_same_from_plain_and_gzip_files_and_lists(tmp_path):
    plain, packed = tmp_path / "t.jsonl", tmp_path / "t.jsonl.gz"
    plain.write_bytes(GOOD + b"\n" + GOOD.replace(b'"input": ""', b'"input": null'))
    with gzip.open(packed, "wb") as f:
        f.write(plain.read_bytes())
    rows = read_training_rows(plain)
    assert rows == load_train_rows(packed) == load_train_rows(rows) and rows[1]["input"] is None
    # An empty output is a row the original build kept (ARB's MCAT solutions) and trained on EOS: both steps read it.
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(GOOD + b"\n" + GOOD.replace(b'"output": "', b'"output": "" , "was": "'))
    assert read_training_rows(empty)[1]["output"] == "" == load_train_rows(empty)[1]["output"]


# --------------------------------------------------------------------------------------------------- figures


def test_only_the_default_reproduction_refreshes_the_readme_figures(tmp_path):
    from platypus_nb.stages import open_stage

    cfg = tmp_path / "other.yaml"
    cfg.write_text(f"run:\n  name: other\n  runs_dir: {tmp_path / 'runs'}\n")
    stage = open_stage("06_results", str(cfg))
    assert stage.figures_dir == tmp_path / "runs" / "other" / "figures" and stage.figures_dir.is_dir()

    from platypus_nb.figures import figures_dir_for

    default = load_config("tiny")
    assert figures_dir_for(default, default.run_dir()) == PROJECT_ROOT / "figures"
    changed = load_config("tiny", ["finetune.learning_rate=5e-4"])
    assert figures_dir_for(changed, changed.run_dir()) == changed.run_dir() / "figures"
    assert figures_dir_for(default, tmp_path / "elsewhere") == tmp_path / "elsewhere" / "figures"
    explicit = load_config("tiny", [f"run.figures_dir={tmp_path / 'mine'}"])
    assert figures_dir_for(explicit, explicit.run_dir()) == tmp_path / "mine"
