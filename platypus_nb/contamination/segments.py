"""The pieces of a text that are embedded separately: a test item's question stem, a long training row's chunks.

all-MiniLM-L6-v2 reads at most 256 word pieces and averages what it reads. An MMLU history or law item is a source
passage of 200-600 words followed by a one-line question: the passage dominates the vector, and in long items the
question lies past the window and is not embedded at all. A training row that asks the same question without the
passage then lands far from the item. So a test item with a passage is also embedded by its **stem** (the question
after the passage), and a training row longer than the window by overlapping **chunks**; a pair's segment
similarity is the best over (row piece, item piece).
"""

from __future__ import annotations

import re

_LIST_LINE = re.compile(r"^\s*(?:[IVX]+|\d+|[a-d])[.)]\s")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"'(])")
# A text with more words than this has a passage worth stripping; fewer is a plain question.
STEM_MIN_TEXT_WORDS = 60
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
        sentences = _SENTENCE_END.split(text.strip())
        stem = " ".join(sentences[-2:])
    return stem if len(stem.split()) < 0.7 * len(text.split()) else text


def chunks(text: str, size: int = CHUNK_WORDS) -> list[str]:
    """Overlapping windows of ``size`` words (stride ``size // 2``) of a text longer than ``size`` words; [] for a
    shorter one (its whole embedding already sees all of it)."""
    words = text.split()
    if len(words) <= size:
        return []
    stride = size // 2
    starts = range(0, len(words) - stride, stride)
    return [" ".join(words[s:s + size]) for s in starts]
