"""Step 01: rebuild Open-Platypus from its sources (Platypus, arXiv 2308.07317, section on the dataset).

One module per concern: ``sources`` (where rows come from), ``formats`` (one formatter per source, as the
original ``data_pipeline/*_format.py`` scripts did), ``filters`` (keywords, incomplete rows, exact duplicates),
``dedup`` (greedy near-duplicate removal, blocked), ``release`` (the released dataset and the comparison with it),
``build`` (the steps in order and the output files), ``compare`` (this build against the one before the 2023
inputs were pinned) and ``plots``. The notebook calls, in order::

    build = start_build(cfg)                      # load + format every source (or load the release)
    build = apply_keyword_filter(build, cfg)
    build = drop_incomplete_rows(build, cfg)
    build = remove_exact_duplicates(build, cfg)
    build = remove_near_duplicates(build, cfg)
    write_outputs(build, cfg, out_dir)
"""

from platypus_nb.dataset.build import (DatasetBuild, apply_keyword_filter, build_dataset, composition,
                                       drop_incomplete_rows, format_sources, load_sources, near_duplicate_pairs,
                                       release_comparison, remove_exact_duplicates, remove_near_duplicates,
                                       removal_reasons, removed_table, start_build, threshold_table, write_outputs)
from platypus_nb.dataset.compare import before_config, compare_builds, revision_comparison
from platypus_nb.dataset.dedup import greedy_near_duplicates, greedy_near_duplicates_original, kept_counts
from platypus_nb.dataset.plots import plot_composition, plot_lengths, plot_similarity
from platypus_nb.dataset.release import compare_with_release, load_release
from platypus_nb.dataset.sources import SOURCE_INFO, SourceUnavailableError

__all__ = ["DatasetBuild", "SOURCE_INFO", "SourceUnavailableError", "apply_keyword_filter", "before_config",
           "build_dataset", "compare_builds", "compare_with_release", "composition", "drop_incomplete_rows",
           "format_sources", "greedy_near_duplicates", "greedy_near_duplicates_original", "kept_counts",
           "load_release", "load_sources", "near_duplicate_pairs", "plot_composition", "plot_lengths",
           "plot_similarity", "release_comparison", "remove_exact_duplicates", "remove_near_duplicates",
           "removal_reasons", "removed_table", "revision_comparison", "start_build", "threshold_table",
           "write_outputs"]
