"""Step 04: merging the Platypus LoRA adapter into its base and into other fine-tunes (paper section 4).

- :mod:`.lora`: the paper's merge (W + (alpha/r) B A), streamed tensor by tensor from safetensors.
- :mod:`.adapter`: a peft LoRA adapter folder read into per-layer updates; :mod:`.safetensors_files`: model folders
  read from their headers and written a tensor at a time; :mod:`.measure`: a merge's time and peak memory.
- :mod:`.partners`: the fine-tunes merged into: Hub models (paper configs) or stand-ins built here (tiny).
- :mod:`.combine`: beyond the paper, several adapters combined with peft's TIES / DARE / cat.
- :mod:`.overlap`: beyond the paper, partner vs Open-Platypus training-data overlap.
- :mod:`.pipeline`: the steps the notebook calls, and models.json / merge_report.json.
"""

from platypus_nb.merge.adapter import read_lora_adapter
from platypus_nb.merge.combine import COMBINATION_METHODS, combine_adapters
from platypus_nb.merge.errors import MergeInputError
from platypus_nb.merge.lora import merge_lora_into
from platypus_nb.merge.safetensors_files import tensor_entries
from platypus_nb.merge.overlap import overlap_figure, training_data_overlap, write_overlap_table
from platypus_nb.merge.partners import (Partner, build_partner, fetch_partner, partner_heldout_rows,
                                        partner_training_rows)
from platypus_nb.merge.pipeline import (MERGE_REPORT, MODELS_JSON, adapter_summary, merge_partner, merge_platypus,
                                        models_manifest, partner_report, prepare_partners, report_table,
                                        update_norms_figure, write_outputs)

__all__ = ["COMBINATION_METHODS", "MERGE_REPORT", "MODELS_JSON", "MergeInputError", "Partner", "adapter_summary",
           "build_partner", "combine_adapters", "fetch_partner", "merge_lora_into", "merge_partner",
           "merge_platypus", "models_manifest", "overlap_figure", "partner_heldout_rows", "partner_report",
           "partner_training_rows", "prepare_partners", "read_lora_adapter", "report_table", "tensor_entries",
           "training_data_overlap", "update_norms_figure", "write_outputs", "write_overlap_table"]
