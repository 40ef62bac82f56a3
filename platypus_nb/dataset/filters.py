"""The filters between formatting and near-duplicate removal: keywords, incomplete rows, exact duplicates.

Each takes rows and returns ``(kept rows, removals)``; nothing is mutated, so a notebook can show every step.
What the original did at each, and the keys that depart from it: docs/dataset.md ("Filters and deduplication").
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from platypus_nb.assets import data_file
from platypus_nb.dataset.rows import removal

# How each keyword-filtered source matched, in the original scripts: airoboros_format.py and reclor_formatted.py
# search each keyword as a whole word in the lower-cased instruction (so the upper-case "AI" never matches);
# guanaco_format.py searches the same words case-insensitively.
KEYWORD_MATCHING = {"airoboros": "lowercase", "reclor": "lowercase", "guanaco": "ignorecase"}
FUSED_KEYWORD = "calculationscience"


def stem_keywords(as_original: bool = True) -> list[str]:
    """The STEM/logic keyword list of the original scripts (``data/platypus_keywords.json``).

    As Python evaluated it, a missing comma fused "calculation" and "science" into "calculationscience", a word
    no text contains; ``as_original=False`` splits it back into the two keywords the authors meant.
    """
    with open(data_file("platypus_keywords.json"), encoding="utf-8") as f:
        keywords = json.load(f)["keywords_as_evaluated"]
    if as_original:
        return keywords
    fixed: list[str] = []
    for k in keywords:
        fixed += ["calculation", "science"] if k == FUSED_KEYWORD else [k]
    return fixed


def keyword_pattern(keywords: list[str], matching: str) -> re.Pattern:
    """One whole-word alternation; equivalent to the original's any(re.search(r"\\b" + k + r"\\b", ...))."""
    body = r"\b(?:" + "|".join(re.escape(k) for k in keywords) + r")\b"
    return re.compile(body, re.IGNORECASE if matching == "ignorecase" else 0)


def has_keyword(instruction: str, pattern: re.Pattern, matching: str) -> bool:
    return pattern.search(instruction.lower() if matching == "lowercase" else instruction) is not None


def keyword_filter(rows: list[dict[str, Any]], keywords: list[str]) -> tuple[list[dict], list[dict]]:
    """Keep rows of airoboros, ReClor and guanaco whose instruction has a keyword; other sources pass."""
    patterns = {m: keyword_pattern(keywords, m) for m in set(KEYWORD_MATCHING.values())}
    kept, removed = [], []
    for row in rows:
        matching = KEYWORD_MATCHING.get(row["source"])
        if matching is None or has_keyword(row["instruction"], patterns[matching], matching):
            kept.append(row)
        else:
            removed.append(removal(row["row_id"], row["source"], "keyword_filter", "no_keyword",
                                   instruction=row["instruction"]))
    return kept, removed


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def drop_incomplete(rows: list[dict[str, Any]], as_original: bool = True) -> tuple[list[dict], list[dict]]:
    """merged_largest_keep.py: rows without an instruction or an output go.

    The original dropped only ``None`` and kept empty strings, which one original formatter does produce: ARB's
    MCAT rows whose solution is a single sentence lose it as "the first sentence" and keep an empty output.
    ``as_original=False`` (``dataset.incomplete_as_original``) drops empty or blank strings too.
    """
    missing_if = (lambda v: v is None) if as_original else _blank
    kept, removed = [], []
    for row in rows:
        missing = [k for k in ("instruction", "output") if missing_if(row[k])]
        if missing:
            removed.append(removal(row["row_id"], row["source"], "incomplete", "missing_" + "_and_".join(missing),
                                   instruction=row["instruction"]))
        else:
            kept.append(row)
    return kept, removed


def order_rows(rows: list[dict[str, Any]], order: str, seed: int) -> list[dict[str, Any]]:
    """The order duplicates are resolved in: the sources' order, or a shuffle seeded with ``run.seed``."""
    if order == "source":
        return list(rows)
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def exact_key(row: dict[str, Any], as_original: bool = True) -> Any:
    """The key of an exact duplicate: merged_largest_keep.py's string ``f"{instruction}-{input}"``, or the pair.

    The string merges rows the pair keeps apart: ("a-b", "") and ("a", "b-"), an input ``None`` and ``"None"``.
    """
    return f"{row['instruction']}-{row['input']}" if as_original else (row["instruction"], row["input"])


def exact_dedup(rows: list[dict[str, Any]], key_as_original: bool = True) -> tuple[list[dict], list[dict]]:
    """merged_largest_keep.py: one row per key (:func:`exact_key`), the one with the longest output.

    The survivor takes the place of the first occurrence (the original's dict kept insertion order); on equal
    lengths the earlier row stays. ``key_as_original=False`` (``dataset.exact_dedup_key_as_original``) keys on the
    (instruction, input) pair instead of the original's joined string.
    """
    position: dict[Any, int] = {}
    kept: list[dict[str, Any]] = []
    losers: list[tuple[dict[str, Any], Any]] = []
    for row in rows:
        key = exact_key(row, key_as_original)
        k = position.get(key)
        if k is None:
            position[key] = len(kept)
            kept.append(row)
        elif len(str(row["output"])) > len(str(kept[k]["output"])):
            losers.append((kept[k], key))
            kept[k] = row
        else:
            losers.append((row, key))
    removed = [removal(row["row_id"], row["source"], "exact_dedup", "exact_duplicate",
                       duplicate_of=kept[position[key]]["row_id"], similarity=1.0, instruction=row["instruction"])
               for row, key in losers]
    return kept, removed
