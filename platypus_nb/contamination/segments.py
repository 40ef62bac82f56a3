"""The pieces of a text that are embedded separately: a test item's question stem, a long training row's chunks.

all-MiniLM-L6-v2 reads at most 256 word pieces and averages what it reads. An MMLU history or law item is a source
passage of 200-600 words followed by a one-line question: the passage dominates the vector, and in long items the
question lies past the window and is not embedded at all. A training row that asks the same question without the
passage then lands far from the item. So a test item with a passage is also embedded by its **stem** (the question
after the passage), and a training row longer than the window by overlapping **chunks**; a pair's segment
similarity is the best over (row piece, item piece).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from platypus_nb.assets import embedding_model_path
from platypus_nb.contamination.testsets import TestItem

_LIST_LINE = re.compile(r"^\s*(?:[IVX]+|\d+|[a-d])[.)]\s")
SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"'(])")
# A text with more words than this has a passage worth stripping; fewer is a plain question.
STEM_MIN_TEXT_WORDS = 60
# Instruction framing around a question: "Q:", "Question 3.", "Finish the sentence:", "Continue the story:", and
# trailing "Answer:" or "What comes next?". It is not part of any test item: a row that wraps a test question in it
# carries extra words that lower its similarity and its word overlap (a short HellaSwag context "Finish the
# sentence: A man sits on a roof. he" is no longer retrieved at all).
_LEADING_FRAME = re.compile(
    r"^\s*(?:(?:Q|Question|Problem|Exercise|Task|Prompt)\s*\d*\s*[:.)]\s+"
    r"|(?:Please\s+)?(?:Finish|Complete|Continue|End)\s+(?:the|this)\s+(?:following\s+)?"
    r"(?:sentence|story|text|passage|paragraph|description|scenario)\s*[:.]\s*)", re.I)
_TRAILING_FRAME = re.compile(r"\s*(?:(?:Answer|A)\s*:|What (?:comes|happens) next\?|How does it (?:end|continue)\?)\s*$",
                             re.I)
# Chunks of this many words (about 200 word pieces for English prose: inside MiniLM's 256) overlapping by half.
CHUNK_WORDS = 150


def question_stem(text: str) -> str:
    """The question that follows a passage, or ``text`` itself when it has no passage.

    A text of more than ``STEM_MIN_TEXT_WORDS`` words: its last paragraph (numbered statement lines "I. ..." stay
    with the question they belong to), or, in a single paragraph, its last two sentences.
    """
    if len(text.split()) <= STEM_MIN_TEXT_WORDS:
        return text
    lines = [line.strip() for line in text.strip().split("\n") if line.strip()]
    if len(lines) > 1:
        end = len(lines)
        while end > 1 and _LIST_LINE.match(lines[end - 1]):
            end -= 1
        stem = "\n".join(lines[end - 1:])
    else:
        sentences = SENTENCE_END.split(text.strip())
        stem = " ".join(sentences[-2:])
    return stem if len(stem.split()) < 0.7 * len(text.split()) else text


def strip_framing(text: str) -> str:
    """``text`` without instruction framing at its start or end (``_LEADING_FRAME``, ``_TRAILING_FRAME``), or
    ``text`` itself when stripping would leave nothing."""
    stripped = text
    for _ in range(3):  # "Question: Q1. ..." nests
        before = stripped
        stripped = _TRAILING_FRAME.sub("", _LEADING_FRAME.sub("", stripped))
        if stripped == before:
            break
    return stripped.strip() or text


def has_separate_passage(text: str) -> bool:
    """Whether a test text is a passage followed by a question in a paragraph of its own (MMLU's history items: "This
    question refers to the following information." / source / question): several questions may share that passage,
    so what a row asks is its stem. A long single paragraph (a law or clinical vignette, a physics problem, a
    HellaSwag context) is one question: a row that rewords all of it rewords that question, whatever it does to its
    last sentences."""
    return question_stem(text) != text and len([line for line in text.strip().split("\n") if line.strip()]) > 1


def chunks(text: str, size: int = CHUNK_WORDS) -> list[str]:
    """Overlapping windows of ``size`` words (stride ``size // 2``) of a text longer than ``size`` words; [] for a
    shorter one (its whole embedding already sees all of it)."""
    words = text.split()
    if len(words) <= size:
        return []
    stride = size // 2
    starts = range(0, len(words) - stride, stride)
    return [" ".join(words[s:s + size]) for s in starts]


def window_cut(items: Sequence[TestItem], model: str) -> pd.DataFrame:
    """For each test item with a passage: its length in the embedding model's word pieces, whether the model's
    window (``max_seq_length``, [CLS] and [SEP] included) cuts it, whether its question stem lies entirely past the
    window, and the last words the model sees and the first it does not."""
    from transformers import AutoTokenizer

    path = Path(embedding_model_path(model))
    window = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"] - 2
    tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=1 << 30)  # we count, the model truncates
    records = []
    for item in items:
        stem = question_stem(item.text)
        if stem == item.text:
            continue
        ids = tokenizer(item.text, add_special_tokens=False)["input_ids"]
        stem_start = len(tokenizer(item.text[:item.text.rfind(stem)], add_special_tokens=False)["input_ids"])
        records.append({"test_id": item.test_id, "test_set": item.test_set, "has_passage": True,
                        "word_pieces": len(ids), "cut": len(ids) > window, "stem_past_window": stem_start >= window,
                        "seen_tail": tokenizer.decode(ids[max(0, window - 40):window]),
                        "unseen": tokenizer.decode(ids[window:])})
    columns = ["test_id", "test_set", "has_passage", "word_pieces", "cut", "stem_past_window", "seen_tail", "unseen"]
    return pd.DataFrame.from_records(records, columns=columns)
