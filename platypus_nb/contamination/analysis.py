"""From similarities and lexical matches to flagged pairs, the clean training set and the summary.

The original notebook kept, for each test question, only its single nearest training item, and removed it at
cosine >= 0.8. That misses a question copied twice (only one copy is anyone's nearest) and can remove a row whose
nearest test item is merely on the same topic. Here every (training row, test item) pair found by either method is
reported, with its evidence, a category and the decision it leads to; a row leaves the training set if any of its
pairs says so.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from platypus_nb.config import CONTAMINATION_CATEGORIES, ContaminationConfig
from platypus_nb.contamination.categories import (REVIEW_COLUMNS, answer_agreement, is_removed, item_coverage,
                                                  lettered_answer, numbers_differ, suggest_category,
                                                  unknown_review_items)
from platypus_nb.contamination.lexical import words
from platypus_nb.contamination.report import dataset_card
from platypus_nb.contamination.testsets import TestItem, data_source_of, training_text_hash
from platypus_nb.contracts import question_text
from platypus_nb.contamination.verifier import (NEAR_SIMILARITY, VERIFIER_VERSION, Pieces,
                                                answer_in_other_words_possible, answers_in_other_words, common_words,
                                                frame_sentences, recall_candidates, segment_similarity, verify)
from platypus_nb.embeddings import best_matches, pairs_at_or_above
from platypus_nb.io import atomic_path, atomic_write_json, atomic_write_text, write_jsonl

FLAGGED_COLUMNS = ["train_index", "benchmark", "test_id", "similarity", "method", "category", "train_text",
                   "test_text", "ngram_overlap", "answer_agreement", "numbers_differ", "suggested_category",
                   "reviewed", "removed", "data_source", "train_hash", "segment_similarity", "word_overlap",
                   "options_found", "verifier_score", "verifier_same"]
# Within a training row, its pairs are listed most severe category first.
_SEVERITY = {"duplicate": 0, "gray_area": 1, "similar_but_different": 2}


def semantic_pairs(train_emb: np.ndarray, test_emb: np.ndarray, threshold: float,
                   block_size: int = 1024) -> pd.DataFrame:
    """Every (training row, test item) pair with cosine >= threshold: ``train_index, test_index, similarity``."""
    t, r, s = pairs_at_or_above(test_emb, train_emb, threshold, block_size)
    return pd.DataFrame({"train_index": r.astype(int), "test_index": t.astype(int), "similarity": s.astype(float)})


def nearest_training_rows(train_emb: np.ndarray, test_emb: np.ndarray,
                          block_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each test item's nearest training row and similarity: the original notebook's quantity."""
    return best_matches(test_emb, train_emb, block_size)


def original_rule_removals(items: Sequence[TestItem], nearest: np.ndarray, nearest_similarity: np.ndarray,
                           threshold: float, test_sets: Sequence[str]) -> set[int]:
    """The rows the original notebook removed: each test item's nearest training row, if at or above threshold.

    Only items of ``test_sets`` count (the original compared with the benchmark test strings, not with the
    evaluation splits it had merged into the training data on purpose).
    """
    compared = np.array([item.test_set in test_sets for item in items], dtype=bool)
    return {int(i) for i in nearest[compared & (nearest_similarity >= threshold)]}


def flag_pairs(rows: Sequence[dict[str, Any]], items: Sequence[TestItem], semantic: pd.DataFrame,
               lexical: pd.DataFrame, train_emb: np.ndarray, test_emb: np.ndarray, cfg: ContaminationConfig,
               review: Optional[dict[tuple[str, str], str]] = None, pieces: Optional[Pieces] = None) -> pd.DataFrame:
    """One row per flagged pair (columns ``FLAGGED_COLUMNS``), with suggested and final category and decision.

    ``method`` is the strongest evidence: ``exact`` (whole test text in the row), ``ngram`` (some of its n-grams),
    ``embedding`` (whole-text similarity at or above the threshold), ``segment`` (retrieved by stage one only: a
    stem, a chunk or a nearest item below the threshold) or ``source`` (the row's data_source is an evaluation
    split). ``similarity`` is the whole-text cosine for every pair. With ``cfg.verifier`` on and ``pieces`` given,
    stage one's candidates join the pairs and every pair gets the verifier's evidence; a candidate found by stage
    one alone is kept only when the verifier calls it the same question.
    """
    pairs = semantic.merge(lexical, on=["train_index", "test_index"], how="outer")
    verifying = cfg.verifier != "none" and pieces is not None
    if verifying:
        candidates = recall_candidates(pieces, cfg.recall_top_k, cfg.recall_floor)
        pairs = pairs.merge(candidates[["train_index", "test_index"]].assign(recalled=True),
                            on=["train_index", "test_index"], how="outer")
    r = pairs["train_index"].to_numpy(dtype=int)
    t = pairs["test_index"].to_numpy(dtype=int)
    pairs["similarity"] = np.einsum("ij,ij->i", train_emb[r], test_emb[t]) if len(pairs) else []
    pairs["ngram_overlap"] = pairs["ngram_overlap"].fillna(0.0)
    pairs["exact"] = pairs["exact"].astype("boolean").fillna(False).astype(bool)
    pairs["method"] = np.where(pairs["exact"], "exact", np.where(
        pairs["ngram_overlap"] > 0, "ngram", np.where(pairs["similarity"] >= cfg.threshold, "embedding", "segment")))
    pairs["segment_similarity"] = segment_similarity(pairs, pieces) if verifying else pairs["similarity"]
    common = common_words([item.text for item in items]) if verifying else frozenset()
    frames = frame_sentences(items) if verifying else frozenset()
    agreements = _agreements(rows, items, pairs, pieces if verifying else None)
    records = []
    for p, agreement in zip(pairs.itertuples(index=False), agreements):
        row, item = rows[p.train_index], items[p.test_index]
        text = question_text(row)
        if verifying:
            # a row asking the stem alone lacks the passage's numbers, not the question's; a row with numbers the
            # item has nowhere asks another instance of its template (verifier.numbers_differ)
            v = verify(text, item, p.segment_similarity, agreement, cfg.verifier_threshold, common, cfg.threshold,
                       frames)
            overlap, options, score, same = v.overlap, v.options, v.score, v.same
            # another place or person, or another question on the same passage: shared n-grams are no evidence
            differ = v.numbers_differ or (v.question_differs and not p.exact)
        else:
            differ = numbers_differ(text, item.text)
            overlap, options, score, same = float("nan"), float("nan"), float("nan"), None
        if p.method == "segment" and not same:
            continue
        suggested = suggest_category(method=p.method, similarity=p.similarity, ngram_overlap=p.ngram_overlap,
                                     exact=p.exact, coverage=item_coverage(text, item) if p.exact else 1.0,
                                     short_text=len(words(item.text)) < cfg.ngram_n, agreement=agreement,
                                     numbers_differ=differ, cfg=cfg, verifier_same=same)
        records.append(_record(p.train_index, row, item.test_set, item.test_id, item.text, p.similarity, p.method,
                               p.ngram_overlap, agreement, differ, suggested)
                       | {"segment_similarity": float(p.segment_similarity), "word_overlap": overlap,
                          "options_found": options, "verifier_score": score,
                          "verifier_same": "" if same is None else same})
    records.extend(_source_records(rows, cfg))
    flagged = pd.DataFrame.from_records(records, columns=[c for c in FLAGGED_COLUMNS
                                                          if c not in ("category", "reviewed", "removed")])
    return apply_decisions(flagged, cfg, review or {})


def _agreements(rows: Sequence[dict[str, Any]], items: Sequence[TestItem], pairs: pd.DataFrame,
                pieces: Optional[Pieces]) -> list[str]:
    """Each pair's ``answer_agreement``, a bare option letter read as the row's own option of that letter
    (:func:`categories.lettered_answer`); with the verifier, a pair at ``verifier.NEAR_SIMILARITY`` or above whose
    short answer names no option ("unknown", "other") is ``"same_meaning"`` when it says the correct one in other
    words (:func:`verifier.answers_in_other_words`)."""
    outputs = {r: lettered_answer(rows[r]["output"], question_text(rows[r])) for r in set(pairs["train_index"])}
    found = [answer_agreement(outputs[r], items[t]) for r, t in zip(pairs["train_index"], pairs["test_index"])]
    if pieces is None:
        return found
    triples = zip(pairs["train_index"], pairs["test_index"], pairs["segment_similarity"])
    ask = [(n, r, t) for n, (r, t, sim) in enumerate(triples) if found[n] in ("unknown", "other")
           and sim >= NEAR_SIMILARITY and answer_in_other_words_possible(outputs[r], items[t])]
    said = answers_in_other_words([outputs[r] for _, r, _ in ask], [items[t] for _, _, t in ask], pieces.encode)
    for (n, _, _), same in zip(ask, said):
        if same:
            found[n] = "same_meaning"
    return found


def _record(train_index: int, row: dict[str, Any], benchmark: str, test_id: str, test_text: str, similarity: float,
            method: str, ngram_overlap: float, agreement: str, differ: bool, suggested: str) -> dict[str, Any]:
    return {"train_index": int(train_index), "benchmark": benchmark, "test_id": test_id,
            "similarity": float(similarity), "method": method, "train_text": question_text(row),
            "test_text": test_text, "ngram_overlap": float(ngram_overlap), "answer_agreement": agreement,
            "numbers_differ": differ, "suggested_category": suggested, "data_source": data_source_of(row),
            "train_hash": training_text_hash(row)}


def _source_records(rows: Sequence[dict[str, Any]], cfg: ContaminationConfig) -> list[dict[str, Any]]:
    """Rows whose data_source is an evaluation split: leakage no comparison with the leaderboard sets can see."""
    sources = set(cfg.eval_split_sources)
    return [_record(i, row, "eval_split_source", f"source:{row['data_source']}", "", float("nan"), "source", 0.0,
                    "unknown", False, "duplicate")
            | {"segment_similarity": float("nan"), "word_overlap": float("nan"), "options_found": float("nan"),
               "verifier_score": float("nan"), "verifier_same": ""}
            for i, row in enumerate(rows) if row.get("data_source") in sources]


def apply_decisions(flagged: pd.DataFrame, cfg: ContaminationConfig,
                    review: dict[tuple[str, str], str]) -> pd.DataFrame:
    """Final category (a review decision, else the suggestion) and whether the pair removes its row."""
    flagged = flagged.copy()
    reviewed = [review.get((h, t)) for h, t in zip(flagged["train_hash"], flagged["test_id"])]
    # bool dtypes also when nothing is flagged (a list of no values becomes float64), so flagged[flagged["removed"]]
    # selects rows, not columns
    flagged["reviewed"] = pd.Series([c is not None for c in reviewed], index=flagged.index, dtype=bool)
    flagged["category"] = [c or s for c, s in zip(reviewed, flagged["suggested_category"])]
    eval_split = flagged["benchmark"].isin([*cfg.eval_splits, "eval_split_source"])
    flagged["removed"] = pd.Series([is_removed(c, e, cfg) for c, e in zip(flagged["category"], eval_split)],
                                   index=flagged.index, dtype=bool)
    order = flagged["category"].map(_SEVERITY)
    flagged = flagged.assign(_order=order).sort_values(["train_index", "_order", "similarity"],
                                                       ascending=[True, True, False])
    return flagged.drop(columns="_order")[FLAGGED_COLUMNS].reset_index(drop=True)


def split_rows(rows: Sequence[dict[str, Any]], flagged: pd.DataFrame) -> tuple[list[dict[str, Any]], list[int]]:
    """(rows that stay, in their original order; indices of the rows removed)."""
    removed = sorted(set(flagged.loc[flagged["removed"], "train_index"].astype(int)))
    gone = set(removed)
    return [row for i, row in enumerate(rows) if i not in gone], removed


def summarize(rows: Sequence[dict[str, Any]], items: Sequence[TestItem], flagged: pd.DataFrame,
              cfg: ContaminationConfig, review: dict[tuple[str, str], str],
              original_removed: Optional[set[int]] = None) -> dict[str, Any]:
    """Counts for summary.json: per test set and category, rows removed, per data_source, against the original."""
    removed_rows = set(flagged.loc[flagged["removed"], "train_index"])
    sets = list(dict.fromkeys(item.test_set for item in items))
    per_set = {}
    for name in [*sets, "eval_split_source"]:
        of_set = flagged[flagged["benchmark"] == name]
        per_set[name] = {"test_items": sum(item.test_set == name for item in items),
                         "pairs": {c: int((of_set["category"] == c).sum()) for c in CONTAMINATION_CATEGORIES},
                         "rows_flagged": int(of_set["train_index"].nunique()),
                         "rows_removed": int(of_set.loc[of_set["removed"], "train_index"].nunique()),
                         "eval_split": name in cfg.eval_splits or name == "eval_split_source"}
    sources = [data_source_of(r) for r in rows]
    by_source = {}
    for src in sorted(set(sources)):
        idx = {i for i, s in enumerate(sources) if s == src}
        by_source[src] = {"rows": len(idx),
                          "rows_flagged": len(idx & set(flagged["train_index"])),
                          "rows_removed": len(idx & removed_rows)}
    seen_keys = set(zip(flagged["train_hash"], flagged["test_id"]))
    summary = {
        "train_rows": len(rows),
        "clean_rows": len(rows) - len(removed_rows),
        "removed_rows": len(removed_rows),
        "threshold": cfg.threshold,
        "gray_area": cfg.gray_area,
        "remove_eval_split_leaks": cfg.remove_eval_split_leaks,
        "flagged_pairs": len(flagged),
        "pairs_by_method": {m: int(n) for m, n in flagged["method"].value_counts().items()},
        "rows_removed_by_category": {c: int(flagged.loc[flagged["removed"] & (flagged["category"] == c),
                                                        "train_index"].nunique()) for c in CONTAMINATION_CATEGORIES},
        "test_sets": per_set,
        "by_data_source": by_source,
        "reviewed_pairs": int(flagged["reviewed"].sum()),
        "review_rows_not_flagged_now": len(set(review) - seen_keys),
        "review_unknown_test_ids": unknown_review_items(review, items),
        # the verifier is rules over evidence, no model: its version names the rules (docs/contamination.md)
        "verifier": {"kind": cfg.verifier, "version": VERIFIER_VERSION if cfg.verifier != "none" else None,
                     "model": None, "threshold": cfg.verifier_threshold, "recall_top_k": cfg.recall_top_k,
                     "recall_floor": cfg.recall_floor},
    }
    if original_removed is not None:
        summary["original_rule"] = {"rows_removed": len(original_removed),
                                    "removed_by_both": len(original_removed & removed_rows),
                                    "removed_only_by_original": len(original_removed - removed_rows),
                                    "removed_only_here": len(removed_rows - original_removed)}
    return summary


def review_todo(flagged: pd.DataFrame) -> pd.DataFrame:
    """Unreviewed pairs in the review file's format, category prefilled with the suggestion, for a reviewer to copy
    (after checking) into the review file."""
    todo = flagged.loc[~flagged["reviewed"], ["train_hash", "test_id", "suggested_category"]]
    todo = todo.rename(columns={"suggested_category": "category"}).drop_duplicates(["train_hash", "test_id"])
    return todo.assign(reviewer="", note="")[list(REVIEW_COLUMNS)]


def heldout_split(rows: Sequence[dict[str, Any]], n: int,
                  seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out rows), each in the original order: ``n`` rows drawn with ``seed``, never trained on.

    Only a row whose question text (:func:`question_text`) occurs once can be held out: a repeated question with
    one copy on each side would be trained on. An error when fewer such rows than ``n`` exist or none would be left
    to train on.
    """
    if n == 0:
        return list(rows), []
    texts = [question_text(r) for r in rows]
    counts = Counter(texts)
    unique = [i for i, t in enumerate(texts) if counts[t] == 1]
    if n > len(unique) or n >= len(rows):
        raise ValueError(f"contamination.heldout_rows = {n}: expected fewer than the {len(rows)} rows that survive "
                         f"decontamination and at most the {len(unique)} of them whose question occurs once")
    picked = set(random.Random(f"{seed}-heldout").sample(unique, n))
    return ([r for i, r in enumerate(rows) if i not in picked], [r for i, r in enumerate(rows) if i in picked])


def write_outputs(out_dir: str | Path, clean_rows: Sequence[dict[str, Any]], flagged: pd.DataFrame,
                  summary: dict[str, Any], heldout_rows: int = 0, seed: int = 0) -> dict[str, Path]:
    """clean.jsonl (the training file), heldout.jsonl, flagged.csv, summary.json, review_todo.csv and README.md (the
    clean file's card: rows removed, rephrased test items per source, :func:`.report.dataset_card`), atomically.

    ``heldout_rows`` of the rows that survive decontamination go to heldout.jsonl instead of clean.jsonl
    (:func:`heldout_split`, seeded with ``seed``): the split is made here, by the one writer of the training file,
    so no held-out row can reach step 03. summary.json records both counts.
    """
    out_dir = Path(out_dir)
    paths = {"clean": out_dir / "clean.jsonl", "heldout": out_dir / "heldout.jsonl", "flagged": out_dir / "flagged.csv",
             "summary": out_dir / "summary.json", "review_todo": out_dir / "review_todo.csv",
             "card": out_dir / "README.md"}
    training, heldout = heldout_split(clean_rows, heldout_rows, seed)
    write_jsonl(paths["clean"], training)
    write_jsonl(paths["heldout"], heldout)
    for key, table in (("flagged", flagged), ("review_todo", review_todo(flagged))):
        with atomic_path(paths[key]) as tmp:
            table.to_csv(tmp, index=False)
    summary = {**summary, "training_rows": len(training), "heldout_rows": len(heldout)}
    atomic_write_json(paths["summary"], summary)
    atomic_write_text(paths["card"], dataset_card(summary, flagged))
    return paths
