"""Step 05: every model's loss on rows it was never trained on, the paper's merge claim made measurable.

The paper says a merge keeps its partner's skill and gains Platypus's. Benchmark scores of a 135M model on a few
questions cannot show that; a per-token loss can, at any scale and in seconds. Each model of the run is scored on
(docs/evaluation.md, "Held-out loss"):

- ``open-platypus``: the rows of the Open-Platypus build that step 02 set apart (``02_contamination/heldout.jsonl``,
  ``contamination.heldout_rows``), never in the training file;
- ``partner:<name>``: for each stand-in partner built from vendored data, rows of its own sources that did not build
  it (:func:`platypus_nb.merge.partners.partner_heldout_rows`, ``evaluate.partner_heldout_rows``).

A row's loss is the mean negative log-likelihood of its response tokens under the training template, tokenised as
step 03 tokenises (:func:`platypus_nb.finetune.data.tokenize_row`: the base model's tokenizer, prompt masked, EOS
appended, cut at ``finetune.cutoff_len``). Every model sees the same token ids, so two models' losses pair row by
row; step 06 compares them (:func:`platypus_nb.results.heldout_comparisons`). Written by hand rather than through the
Trainer's evaluation loop, which reports one mean per dataset and not a value per row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from platypus_nb.config import Config, FinetuneConfig
from platypus_nb.contracts import question_text
from platypus_nb.io import atomic_write_text, read_csv_checked, read_jsonl, sha256_text

OPEN_PLATYPUS = "open-platypus"
PARTNER_DOMAIN = "partner:"  # + the partner's name: a plain name has no ":", so no domain is named twice
HELDOUT_LOSS_CSV = "heldout_loss.csv"
LOSS_COLUMNS = ["model", "role", "compare_to", "domain", "row", "row_hash", "tokens", "loss"]


def heldout_sets(cfg: Config, heldout_file: Path) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The held-out rows of this run per domain, and a line for each domain that has none and why."""
    sets: dict[str, list[dict[str, Any]]] = {}
    notes = []
    rows = read_jsonl(heldout_file) if heldout_file.is_file() else []
    if rows:
        sets[OPEN_PLATYPUS] = rows
    else:
        notes.append(f"{OPEN_PLATYPUS}: no held-out rows in {heldout_file} (contamination.heldout_rows = "
                     f"{cfg.contamination.heldout_rows}; step 02 writes them)")
    n = cfg.evaluate.partner_heldout_rows
    for spec in cfg.merge.partners:
        if not spec.build_data:
            notes.append(f"{PARTNER_DOMAIN}{spec.name}: a downloaded model, whose training data is not vendored")
        elif n == 0:
            notes.append(f"{PARTNER_DOMAIN}{spec.name}: evaluate.partner_heldout_rows = 0")
        else:
            from platypus_nb.merge import partner_heldout_rows

            sets[f"{PARTNER_DOMAIN}{spec.name}"] = partner_heldout_rows(spec, cfg.run.seed, n)
    return sets, notes


def tokenize_sets(sets: dict[str, list[dict[str, Any]]], tokenizer: Any,
                  fcfg: FinetuneConfig) -> dict[str, list[dict[str, Any]]]:
    """Each row as step 03 tokenises it (``input_ids``, ``shift_labels``), with its id and a hash of its text."""
    from platypus_nb.finetune.data import tokenize_row

    return {domain: [{**tokenize_row(r, tokenizer, fcfg), "row": i,
                      "row_hash": sha256_text(question_text(r) + "\n" + r["output"])[:16]}
                     for i, r in enumerate(rows)] for domain, rows in sets.items()}


def row_losses(model: Any, examples: Sequence[dict[str, Any]]) -> list[tuple[int, float]]:
    """(response tokens, their mean loss) per example, in order; a row without a response token inside the cutoff
    gets (0, nan).

    One row per forward pass, unpadded and without an attention mask, the LM head only where a response token is
    predicted (``logits_to_keep``), logits in float32 under ``torch.inference_mode``. On 2 CPU cores that is 1.85x
    faster than right-padded batches of 8 with a mask, and closer to a float64 forward pass (1.3e-5 against 1.8e-4
    nats at most on the tiny run's rows; benchmarks/README.md, "Held-out loss"): padding is computed and thrown away,
    the masked attention path accumulates in another order, and most of a row's positions are its prompt, whose
    logits the loss never uses.
    """
    import torch
    import torch.nn.functional as F

    from platypus_nb.finetune.data import IGNORE_INDEX

    device = next(model.parameters()).device
    out: list[tuple[int, float]] = []
    with torch.inference_mode():
        for e in examples:
            labels = torch.tensor(e["shift_labels"], device=device)
            keep = (labels != IGNORE_INDEX).nonzero().squeeze(1)
            if len(keep) == 0:  # the prompt fills the cutoff: nothing to score, no forward pass
                out.append((0, math.nan))
                continue
            ids = torch.tensor([e["input_ids"]], device=device)
            logits = model(input_ids=ids, logits_to_keep=keep).logits[0].float()
            out.append((len(keep), float(F.cross_entropy(logits, labels[keep]))))
    return out


def heldout_losses(models: Sequence[Any], sets: dict[str, list[dict[str, Any]]], cfg: Config,
                   out_dir: str | Path) -> pd.DataFrame:
    """Every model's loss on every held-out row (:data:`LOSS_COLUMNS`), one model in memory at a time, written to
    ``<out_dir>/heldout_loss.csv`` (with its header only when there are no held-out rows)."""
    from platypus_nb.assets import load_tokenizer
    from platypus_nb.evaluate import load_for_eval, quiet_library_progress

    records = []
    if sets:
        tokenizer = load_tokenizer(cfg.model.base, trust_remote_code=cfg.model.trust_remote_code)
        examples = tokenize_sets(sets, tokenizer, cfg.finetune)
        for m in models:
            with quiet_library_progress():  # no weight-loading bars, as in the scoring above
                model, _ = load_for_eval(m, cfg.evaluate)
            for domain, rows in examples.items():
                losses = row_losses(model, rows)
                records += [{"model": m.name, "role": m.role, "compare_to": m.compare_to, "domain": domain,
                             "row": e["row"], "row_hash": e["row_hash"], "tokens": n, "loss": loss}
                            for e, (n, loss) in zip(rows, losses)]
            del model
    table = pd.DataFrame(records, columns=LOSS_COLUMNS)
    atomic_write_text(Path(out_dir) / HELDOUT_LOSS_CSV, table.to_csv(index=False, float_format="%.6f"))
    return table


def mean_losses(table: pd.DataFrame) -> pd.DataFrame:
    """Models as rows, domains as columns: the mean over rows of each row's mean response-token loss."""
    if not table["loss"].notna().any():
        return pd.DataFrame(index=pd.Index([], name="model"))
    means = table.dropna(subset=["loss"]).pivot_table(index="model", columns="domain", values="loss", aggfunc="mean")
    return means.loc[[m for m in dict.fromkeys(table["model"]) if m in means.index]]


def read_heldout_losses(path: str | Path) -> pd.DataFrame:
    """Step 05's heldout_loss.csv, checked; what step 06 reads."""
    return read_csv_checked(path, LOSS_COLUMNS, "run notebooks/05_evaluate.ipynb for this run first")
