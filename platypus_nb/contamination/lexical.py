"""Lexical matching: is a test text (or a long part of it) contained verbatim in a training row?

Embeddings dilute a verbatim copy inside a longer row: an MMLU question with its four options appended drops from
1.0 to about 0.83 similarity, and a HellaSwag context inside a longer story can fall below any useful threshold. So
we also look for the test text itself, after normalising both sides to lower-case word tokens (punctuation, LaTeX
dollars and spacing ignored):

- a test text of at least n words (n = 13, as GPT-3's contamination study and lm-eval's decontamination) is split
  into its n-grams; a pair's ``ngram_overlap`` is the share of them found in the training row;
- a shorter text (most TruthfulQA questions) is one key: the whole word sequence;
- a pair is ``exact`` when the whole normalised test text occurs in the training row.

A word sequence that occurs in more than ``max_test_items`` test items is boilerplate (MMLU's "Which of the
following is true", the moral_scenarios preamble) and is not used as evidence.

Speed: words become integer ids and every window of the needed lengths gets a 64-bit polynomial hash, computed for
the whole concatenated corpus at once with numpy; a window matches when its hash is among the test keys
(``np.isin``). No pairwise loop: the cost is linear in the number of training words.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

_WORD = re.compile(r"\w+")
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier; arithmetic wraps modulo 2**64


def words(text: str) -> list[str]:
    """Lower-case word tokens after Unicode NFKC normalisation: what lexical matching compares."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def normalised(text: str) -> str:
    return " ".join(words(text))


def contains_words(haystack: str, needle: str) -> bool:
    """Whether ``needle``'s words occur contiguously, on word boundaries, in ``haystack`` (both normalised)."""
    return bool(needle) and f" {needle} " in f" {haystack} "


class _Corpus:
    """Texts as one array of word ids, with the text each position belongs to."""

    def __init__(self, token_lists: Sequence[Sequence[str]], vocab: dict[str, int]):
        self.lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
        flat = [vocab.setdefault(w, len(vocab) + 1) for tokens in token_lists for w in tokens]
        self.ids = np.array(flat, dtype=np.uint64)
        self.text_of = np.repeat(np.arange(len(self.lengths)), self.lengths)

    def window_hashes(self, lengths: Sequence[int]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """For each k in ``lengths`` (ascending): k, and (text index, hash) of every k-word window inside one text.

        A generator, so a caller that handles one length at a time holds one length's windows in memory.
        """
        wanted = set(lengths)
        h = self.ids.copy()
        for k in range(1, max(wanted, default=0) + 1):
            if k > 1:
                h = h[:-1] * _BASE + self.ids[k - 1:]
            if k in wanted:
                start_text = self.text_of[:len(h)]
                inside = start_text == self.text_of[k - 1:k - 1 + len(h)]
                yield k, start_text[inside], h[inside]


def _isin(hashes: np.ndarray, keys: np.ndarray) -> np.ndarray:
    # pandas' hash-table membership is ~10x faster than np.isin's sort for millions of uint64 hashes.
    return pd.Series(hashes).isin(keys).to_numpy()


def _test_keys(test_tokens: Sequence[Sequence[str]], corpus: _Corpus, n: int, min_words: int,
               max_test_items: int) -> pd.DataFrame:
    """The informative keys of each test text: (test index, k, hash), boilerplate keys dropped."""
    short_lengths = sorted({len(t) for t in test_tokens if min_words <= len(t) < n})
    windows = {k: (item, h) for k, item, h in corpus.window_hashes([n, *short_lengths])}
    frames = []
    if n in windows:
        item, h = windows[n]
        ngrams = pd.DataFrame({"test_index": item, "k": n, "hash": h}).drop_duplicates()
        # An n-gram is contained in exactly the test items that have it among their n-grams.
        ngrams["test_items"] = ngrams.groupby("hash")["test_index"].transform("size")
        frames.append(ngrams)
    for k in short_lengths:
        item, h = windows[k]
        whole = corpus.lengths[item] == k
        short = pd.DataFrame({"test_index": item[whole], "k": k, "hash": h[whole]}).drop_duplicates()
        # A short text may also sit inside longer test texts ("Which of the following is true ..."): count those.
        inside = _isin(h, short["hash"].to_numpy())
        containing = pd.DataFrame({"hash": h[inside], "item": item[inside]}).drop_duplicates()
        short["test_items"] = short["hash"].map(containing.groupby("hash").size())
        frames.append(short)
    if not frames:
        return pd.DataFrame({"test_index": [], "k": [], "hash": []})
    keys = pd.concat(frames, ignore_index=True)
    return keys[keys["test_items"] <= max_test_items].drop(columns="test_items")


def lexical_pairs(train_texts: Sequence[str], test_texts: Sequence[str], n: int = 13, min_words: int = 5,
                  max_test_items: int = 10) -> pd.DataFrame:
    """Every (training row, test item) pair sharing at least one informative key.

    Returns one row per pair with columns ``train_index, test_index``, ``ngram_overlap`` (the share of the test
    text's keys found in the row), ``exact`` (the whole normalised test text occurs in the row) and ``coverage``
    (test words / training row words, at most 1: how much of the row the test text would explain).
    """
    vocab: dict[str, int] = {}
    test_tokens = [words(t) for t in test_texts]
    train_tokens = [words(t) for t in train_texts]
    keys = _test_keys(test_tokens, _Corpus(test_tokens, vocab), n, min_words, max_test_items)
    columns = {"train_index": int, "test_index": int, "ngram_overlap": float, "exact": bool, "coverage": float}
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})
    if keys.empty or not train_texts:
        return empty
    keys_by_length = {k: group["hash"].to_numpy() for k, group in keys.groupby("k")}
    found = []
    for k, row, h in _Corpus(train_tokens, vocab).window_hashes(sorted(keys_by_length)):
        hits = _isin(h, keys_by_length[k])
        found.append(pd.DataFrame({"train_index": row[hits], "k": k, "hash": h[hits]}).drop_duplicates())
    matches = pd.concat(found).merge(keys, on=["k", "hash"])
    if matches.empty:
        return empty
    pairs = matches.groupby(["train_index", "test_index"]).size().rename("shared").reset_index()
    pairs["ngram_overlap"] = pairs["shared"] / pairs["test_index"].map(keys.groupby("test_index").size())
    train_norm = [" ".join(t) for t in train_tokens]
    test_norm = [" ".join(t) for t in test_tokens]
    pairs["exact"] = [contains_words(train_norm[r], test_norm[t])
                      for r, t in zip(pairs["train_index"], pairs["test_index"])]
    pairs["coverage"] = [min(1.0, len(test_tokens[t]) / max(1, len(train_tokens[r])))
                         for r, t in zip(pairs["train_index"], pairs["test_index"])]
    return pairs[list(columns)].astype(columns).sort_values(["train_index", "test_index"], ignore_index=True)
