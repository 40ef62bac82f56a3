"""The Open-Platypus sources: where each one's rows come from (data/, a local file, the Hub) and nothing else.

Five sources are vendored in ``data/`` and load offline: MATH test, SciBench, TheoremQA (the card's) and OpenBookQA,
SciQ (optional extras). SciBench and TheoremQA come in two upstream revisions, the one the 2023 build read and the
current one (``dataset.source_revision``); TheoremQA questions are joined with their theorem's definition by name
(docs/dataset.md). The others only exist on the Hugging Face Hub, on GitHub (PRM800K) or behind the ARB API,
so their loaders keep the original scripts' real download paths (``data_pipeline/*_format.py`` at dc90c1a); a user
can also point ``dataset.source_files.<name>`` at a local copy in the source's real schema, which is how the tests
feed them small fixtures. A source that cannot be loaded fails with its name and what to do, before any work.

Rows are returned as the source's own records (plain dicts), in a fixed order, each with nothing added except a
``_file``/``_split``/``_library`` key where the original read several files or endpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from platypus_nb.assets import AssetError, data_file
from platypus_nb.benchmarks_data import read_benchmark
from platypus_nb.config import DATASET_SOURCES, DatasetConfig, resolve_path
from platypus_nb.io import open_text, read_jsonl


class SourceUnavailableError(RuntimeError):
    """A source could not be loaded; the message names it, where it was looked for, and what to do."""


@dataclass(frozen=True)
class SourceInfo:
    """What the dataset card and the composition table say about a source."""

    name: str
    # The ``data_source`` tag rows carry in the released Open-Platypus (Data-Provenance "Dataset Filter IDs").
    data_source: str
    licence: str
    # Where the original scripts took it from; the offline file where there is one.
    origin: str
    offline: bool


# (data_source, licence, origin, offline) in the order of config.DATASET_SOURCES, which owns the names.
SOURCE_INFO: dict[str, SourceInfo] = {name: SourceInfo(name, *facts) for name, facts in zip(DATASET_SOURCES, [
    ("MATH/PRM-800K", "MIT", "openai/prm800k phase1+2 train+test JSONL on GitHub (convert_prm.py)", False),
    ("MATH/PRM-800K", "MIT",
     "MATH train (Hub: EleutherAI/hendrycks_math) + test (data/math_test.jsonl.gz) (update_MATH.py)", False),
    ("scienceqa", "CC BY-NC-SA 4.0", "Hub: metaeval/ScienceQA_text_only, train", False),
    ("scibench", "MIT", "data/scibench_2023-07-21/ (mandyyyyii/scibench dataset/original at 8dffce4; "
     "source_revision current: data/scibench/, 2024)", True),
    ("reclor", "Non-commercial", "Hub: metaeval/reclor, train", False),
    ("theoremqa", "MIT", "data/theoremqa_test_2023-07-26.json.gz + theorem definitions from "
     "data/theoremqa_all_theorems.json.gz (the Hub's wenhu/TheoremQA test.csv; source_revision current: "
     "data/theoremqa_test.json.gz)", True),
    ("leetcode_ne", "None listed", "Hub: nuprl/leetcode-solutions-python-testgen-gpt4, train", False),
    ("airoboros", "other (Data Provenance: CC BY-NC 4.0 + OpenAI terms)",
     "Hub: jondurbin/airoboros-gpt4-1.4.1, instructions.jsonl", False),
    ("tigerbot-kaggle", "apache-2.0", "Hub: TigerResearch/tigerbot-kaggle-leetcodesolutions-en-2k, train", False),
    ("ARB", "CC BY 4.0", "ARB API https://arb.duckai.org/api/lib (duckai_format.py)", False),
    ("guanaco", "apache-2.0", "Hub: timdettmers/openassistant-guanaco, train+test", False),
    ("openbookqa", "apache-2.0", "data/openbookqa_validation.jsonl.gz (validation only, no fact1; the original "
     "read train+test+validation of the 'additional' config)", True),
    ("sciq", "CC BY-NC 3.0", "data/sciq_validation.jsonl.gz", True),
], strict=True)}

OFFLINE_SOURCES = "math (test split), scibench, theoremqa, openbookqa, sciq"

# The vendored files of each upstream revision (docs/dataset.md, "Source revisions").
SCIBENCH_DIRS = {"paper_2023": "scibench_2023-07-21", "current": "scibench"}
THEOREMQA_TEST_FILES = {"paper_2023": "theoremqa_test_2023-07-26.json.gz", "current": "theoremqa_test.json.gz"}
THEOREMQA_DEFINITIONS_FILE = "theoremqa_all_theorems.json.gz"
SCIBENCH_BOOKS = ("atkins", "calculus", "chemmc", "class", "diff", "fund", "matter", "quan", "stat", "thermo")
# The seven MATH subjects; the original globbed MATH/train/**/*.json, so its order was the file system's.
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
MATH_TRAIN_HUB_ID = "EleutherAI/hendrycks_math"
PRM800K_URLS = tuple(f"https://github.com/openai/prm800k/raw/main/prm800k/data/{name}.jsonl"
                     for name in ("phase1_test", "phase1_train", "phase2_test", "phase2_train"))
ARB_API = "https://arb.duckai.org/api/lib"
# (library, list endpoint, whether each item must be fetched by id), in duckai_format.py's order.
ARB_LIBRARIES = (("math", "math", True), ("mcatReading", "mcatReading", False), ("law", "law", False),
                 ("mcatScience", "mcatscience/val", False), ("physics", "physics/val", True))


# --------------------------------------------------------------------------------------------------- loading


def load_source_records(name: str, dcfg: DatasetConfig) -> list[dict[str, Any]]:
    """The raw records of one source, capped at ``dcfg.max_rows_per_source`` (the first N)."""
    records = _LOADERS[name](dcfg)
    if dcfg.max_rows_per_source is not None:
        records = records[:dcfg.max_rows_per_source]
    return records


def _local_or(name: str, dcfg: DatasetConfig, fetch: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """A configured local copy wins over the download (the original scripts' Hub/GitHub/API path)."""
    if name in dcfg.source_files:
        return read_records(resolve_path(dcfg.source_files[name]), name)
    try:
        return fetch()
    except SourceUnavailableError:
        raise
    except Exception as e:  # datasets, urllib and huggingface_hub raise many types for "no network"
        raise SourceUnavailableError(_unreachable(name, e)) from e


def _unreachable(name: str, err: Exception) -> str:
    first_line = str(err).splitlines()[0] if str(err) else ""
    return (f"source {name!r} could not be loaded from {SOURCE_INFO[name].origin} ({type(err).__name__}: "
            f"{first_line}). It is not vendored in data/: connect to the Hugging Face Hub / internet, or set "
            f"dataset.source_files.{name} to a local copy in the source's real schema, or remove {name!r} from "
            f"dataset.sources (offline sources: {OFFLINE_SOURCES}).")


def read_records(path: Path, name: str) -> list[dict[str, Any]]:
    """Records from a local JSON (list, or ARB's {library: [items]}), JSONL, CSV or parquet file."""
    suffixes = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        if suffixes in (".jsonl", ".jsonl.gz"):
            return read_jsonl(path)
        if suffixes in (".json", ".json.gz"):
            with open_text(path) as f:
                data = json.load(f)
            if name == "arb" and isinstance(data, dict):
                return [dict(item, _library=library) for library, items in data.items() for item in items]
            if not isinstance(data, list):
                raise ValueError(f"expected a JSON list of records, got {type(data).__name__}")
            return data
        if suffixes in (".csv", ".parquet"):
            import pandas as pd

            frame = pd.read_csv(path) if suffixes == ".csv" else pd.read_parquet(path)
            return frame.to_dict(orient="records")
    except (OSError, ValueError) as e:
        raise SourceUnavailableError(f"source {name!r}: could not read {path}: {e}") from e
    raise SourceUnavailableError(f"source {name!r}: {path} is not .json, .jsonl, .csv or .parquet")


def _vendored(name: str, rel: str) -> Path:
    try:
        return data_file(rel)
    except AssetError as e:
        raise SourceUnavailableError(f"source {name!r}: {e}") from e


def _benchmark(name: str, split: str) -> list[dict[str, Any]]:
    try:
        return read_benchmark(split)
    except AssetError as e:
        raise SourceUnavailableError(f"source {name!r}: {e}") from e


def _vendored_json(name: str, rel: str) -> list[dict[str, Any]]:
    with open_text(_vendored(name, rel)) as f:
        return json.load(f)


def _hub_rows(hub_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    import datasets

    return datasets.load_dataset(hub_id, **kwargs).to_list()


def _load_prm800k(dcfg: DatasetConfig) -> list[dict[str, Any]]:
    def fetch() -> list[dict[str, Any]]:
        import datasets

        # GitHub raw files, as convert_prm.py downloaded them; the download manager caches them.
        paths = datasets.DownloadManager().download(list(PRM800K_URLS))
        return [row for p in paths for row in read_jsonl(p)]

    return _local_or("prm800k", dcfg, fetch)


def _load_math(dcfg: DatasetConfig) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    if "train" in dcfg.math_splits:
        train = _local_or("math", dcfg, lambda: [
            row for subject in MATH_SUBJECTS for row in _hub_rows(MATH_TRAIN_HUB_ID, name=subject, split="train")])
        records += [dict(r, _split="train") for r in train]
    if "test" in dcfg.math_splits:
        records += [dict(r, _split="test") for r in _benchmark("math", "math_test")]
    return records


def _load_scibench(dcfg: DatasetConfig) -> list[dict[str, Any]]:
    folder = SCIBENCH_DIRS[dcfg.source_revision]

    def vendored() -> list[dict[str, Any]]:
        # scibench_format.py read every *.json of dataset/original, the *_sol.json files (worked solutions) too.
        rows = []
        for book in SCIBENCH_BOOKS:
            for stem in (book, f"{book}_sol"):
                rows += [dict(r, _file=f"{stem}.json") for r in _vendored_json("scibench", f"{folder}/{stem}.json.gz")]
        return rows

    return _local_or("scibench", dcfg, vendored)


def theoremqa_test_records(source_revision: str) -> list[dict[str, Any]]:
    """The vendored TheoremQA test set of one revision: step 01's source and step 02's evaluation split alike."""
    return _vendored_json("theoremqa", THEOREMQA_TEST_FILES[source_revision])


def theoremqa_definitions() -> dict[str, str]:
    """Theorem name (lower-cased) -> definition, from the authors' all_theorems.json.

    The test set names theorems in lower case ("lah number"), all_theorems.json in title case ("Lah Number"); the
    354 names stay distinct when lower-cased.
    """
    with open_text(_vendored("theoremqa", THEOREMQA_DEFINITIONS_FILE)) as f:
        return {name.lower(): definition for name, definition in json.load(f).items()}


def join_theorem_definitions(records: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Each record with ``theorem_def``: the definition of its ``theorem``, as the Hub's test.csv carried it.

    A record that already has a non-empty ``theorem_def`` (a local copy of the Hub CSV) keeps it. A theorem name
    that is not in all_theorems.json fails naming the row, since the instruction cannot be built without it.
    """
    definitions = theoremqa_definitions()
    joined = []
    for i, record in enumerate(records):
        if isinstance(record, dict) and isinstance(record.get("theorem_def"), str) and record["theorem_def"]:
            joined.append(record)
            continue
        name = record.get("theorem") if isinstance(record, dict) else None
        if not isinstance(name, str) or name.lower() not in definitions:
            raise SourceUnavailableError(
                f"source 'theoremqa' row {i} ({where}, id {record.get('id') if isinstance(record, dict) else None!r}): "
                f"theorem {name!r} has no definition in data/{THEOREMQA_DEFINITIONS_FILE} (expected one of its "
                f"{len(definitions)} theorem names, compared case-insensitively); set "
                f"dataset.theoremqa_theorem: name to build the instruction from the name alone")
        joined.append(dict(record, theorem_def=definitions[name.lower()]))
    return joined


def _load_theoremqa(dcfg: DatasetConfig) -> list[dict[str, Any]]:
    records = _local_or("theoremqa", dcfg, lambda: theoremqa_test_records(dcfg.source_revision))
    if dcfg.theoremqa_theorem == "name":
        return records
    where = dcfg.source_files.get("theoremqa") or f"data/{THEOREMQA_TEST_FILES[dcfg.source_revision]}"
    return join_theorem_definitions(records, where)


def _load_arb(dcfg: DatasetConfig) -> list[dict[str, Any]]:
    def fetch() -> list[dict[str, Any]]:
        rows = []
        for library, endpoint, by_id in ARB_LIBRARIES:
            items = _get_json(f"{ARB_API}/{endpoint}")
            if by_id:
                items = [_get_json(f"{ARB_API}/{endpoint}/{item['_id']}") for item in items]
            rows += [dict(item, _library=library) for item in items]
        return rows

    return _local_or("arb", dcfg, fetch)


def _get_json(url: str, timeout: float = 30.0) -> Any:
    import urllib.request

    request = urllib.request.Request(url, headers={"accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def _hub_source(name: str, hub_id: str, splits: tuple[str, ...] = ("train",),
                data_files: Optional[str] = None) -> Callable[[DatasetConfig], list[dict[str, Any]]]:
    def load(dcfg: DatasetConfig) -> list[dict[str, Any]]:
        kwargs = {"data_files": data_files} if data_files else {}
        return _local_or(name, dcfg, lambda: [row for split in splits
                                              for row in _hub_rows(hub_id, split=split, **kwargs)])

    return load


def _vendored_source(name: str, split: str) -> Callable[[DatasetConfig], list[dict[str, Any]]]:
    def load(dcfg: DatasetConfig) -> list[dict[str, Any]]:
        return _local_or(name, dcfg, lambda: _benchmark(name, split))

    return load


# In the order of config.DATASET_SOURCES.
_LOADERS: dict[str, Callable[[DatasetConfig], list[dict[str, Any]]]] = dict(zip(DATASET_SOURCES, (
    _load_prm800k,
    _load_math,
    _hub_source("scienceqa", "metaeval/ScienceQA_text_only"),
    _load_scibench,
    _hub_source("reclor", "metaeval/reclor"),
    # The original read wenhu/TheoremQA test.csv from the Hub; data/ holds the same test split from the authors'
    # repository and the definitions that CSV joined onto it.
    _load_theoremqa,
    _hub_source("leetcode", "nuprl/leetcode-solutions-python-testgen-gpt4"),
    _hub_source("airoboros", "jondurbin/airoboros-gpt4-1.4.1", data_files="instructions.jsonl"),
    _hub_source("tigerbot", "TigerResearch/tigerbot-kaggle-leetcodesolutions-en-2k"),
    _load_arb,
    _hub_source("guanaco", "timdettmers/openassistant-guanaco", splits=("train", "test")),
    _vendored_source("openbookqa", "openbookqa_validation"),
    _vendored_source("sciq", "sciq_validation"),
), strict=True))
