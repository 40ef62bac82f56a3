"""Step 02: benchmark contamination analysis (Platypus section 2, the original ``data_similarity.ipynb`` cell 3).

The notebook ``02_contamination_analysis.ipynb`` calls these in order:

1. :func:`platypus_nb.contracts.read_training_rows` (step 01's ``open_platypus.jsonl``) and :func:`load_test_items`
   (data/);
2. :func:`embed_pieces` on both sides (whole texts, test items' question stems, rows without
   instruction framing, long rows' chunks; cached), then
   :func:`semantic_pairs` (every whole-text pair at or above the threshold) and :func:`nearest_training_rows` (each
   test item's nearest row, what the original used);
3. :func:`lexical_pairs` (verbatim test text or 13-grams of it inside a training row);
4. :func:`flag_pairs` (stage one's candidates join the pairs, the verifier's evidence -> suggested category ->
   review override -> removal decision; docs/contamination.md);
5. :func:`split_rows`, :func:`summarize`, :func:`write_outputs` (which also sets :func:`heldout_split`'s held-out rows
   apart from the training file and writes the clean file's card), and the figures in :mod:`.plots`;
6. :func:`rephrase_rates` and :func:`subject_rates` (MATH against MMLU's mathematics subjects) over the outputs.
"""

from platypus_nb.contamination.analysis import (FLAGGED_COLUMNS, flag_pairs, heldout_split, nearest_training_rows,
                                                original_rule_removals, semantic_pairs, split_rows,
                                                summarize, write_outputs)
from platypus_nb.contamination.categories import (answer_agreement, load_review, suggest_category,
                                                  unknown_review_items)
from platypus_nb.contamination.lexical import lexical_pairs
from platypus_nb.contamination.report import (MMLU_MATH_SUBJECTS, dataset_card, math_sources, rephrase_rates,
                                              rows_per_source, source_counts, subject_rates)
from platypus_nb.contamination.segments import chunks, question_stem, window_cut
from platypus_nb.contamination.verifier import (Pieces, embed_pieces, recall_candidates, test_pieces,
                                                training_pieces)
from platypus_nb.contamination.testsets import (TestItem, load_eval_set, load_test_items, load_test_set,
                                                training_text_hash)
from platypus_nb.contracts import question_text

__all__ = ["FLAGGED_COLUMNS", "Pieces", "TestItem", "chunks", "embed_pieces", "question_stem", "recall_candidates",
           "test_pieces", "training_pieces", "answer_agreement", "flag_pairs", "heldout_split", "lexical_pairs",
           "load_review", "load_eval_set", "load_test_items", "load_test_set",
           "nearest_training_rows", "original_rule_removals", "rephrase_rates", "semantic_pairs", "split_rows",
           "suggest_category", "summarize", "question_text", "training_text_hash", "unknown_review_items",
           "window_cut", "write_outputs", "MMLU_MATH_SUBJECTS", "dataset_card", "math_sources", "rows_per_source",
           "source_counts", "subject_rates"]
