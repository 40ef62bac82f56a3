"""The pipeline's stages and the one call each notebook makes to set itself up.

A notebook's ``parameters`` cell is its whole interface (``config``, ``run_dir``, ``overrides`` and a few
stage-specific values); :func:`open_stage` turns them into a validated config and the stage's output folder, so
that the same notebook runs interactively in JupyterLab (cwd ``notebooks/``) and headless under papermill.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from platypus_nb.config import Config, load_config, resolve_path
from platypus_nb.contracts import STAGES, out_dir_name
from platypus_nb.figures import figures_dir_for


@dataclass
class Stage:
    """What a notebook needs: the config, its run folder, its own output folder and the figures folder."""

    cfg: Config
    run_dir: Path
    out_dir: Path
    figures_dir: Path
    stem: Optional[str] = None

    def output_of(self, notebook_stem: str) -> Path:
        """The output folder of an earlier stage in the same run, which this stage must declare it reads.

        The runner records and checks only declared inputs, so an undeclared read would go unnoticed by it.
        """
        contract = STAGES.get(self.stem or "")
        if contract is not None and notebook_stem not in {r.stage for r in contract.reads}:
            declared = ", ".join(r.stage for r in contract.reads) or "none"
            raise ValueError(f"stage {self.stem} reads the outputs of {notebook_stem}, which platypus_nb/contracts.py "
                             f"does not declare (declared: {declared})")
        return self.run_dir / out_dir_name(notebook_stem)


def open_stage(notebook_stem: str, config: str = "tiny", run_dir: Optional[str] = None,
               overrides: Optional[dict[str, Any]] = None, params: Optional[dict[str, Any]] = None) -> Stage:
    """Load and validate the config, seed Python's RNGs, and create the stage's output folder.

    Figures go to the project's ``figures/`` only for the default reproduction (see
    :func:`platypus_nb.figures.figures_dir_for`), so other runs leave the checkout clean.

    ``params`` maps dotted config keys to a notebook's stage-specific parameters
    (``{"contamination.threshold": threshold}``); a value of None means "use the config's".
    """
    merged = dict(overrides or {})
    merged.update({k: v for k, v in (params or {}).items() if v is not None})
    cfg = load_config(config, merged)
    seed_everything(cfg.run.seed)
    rd = resolve_path(run_dir) if run_dir else cfg.run_dir()
    out = rd / out_dir_name(notebook_stem)
    out.mkdir(parents=True, exist_ok=True)
    figs = figures_dir_for(cfg, rd)
    figs.mkdir(parents=True, exist_ok=True)
    return Stage(cfg=cfg, run_dir=rd, out_dir=out, figures_dir=figs, stem=notebook_stem)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (when imported) from the config: every random step is reproducible."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # torch is a hard dependency; kept optional here so config-only tools start fast
        return
    torch.manual_seed(seed)
