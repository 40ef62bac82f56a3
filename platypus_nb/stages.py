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

# Notebook file stem -> output folder name inside runs/<run>/.
STAGE_DIRS = {
    "00_setup": "00_setup",
    "01_dataset_construction": "01_dataset",
    "02_contamination_analysis": "02_contamination",
    "03_finetune": "03_finetune",
    "04_merge": "04_merge",
    "05_evaluate": "05_evaluate",
    "06_results": "06_results",
}


def stage_dir_name(notebook_stem: str) -> str:
    return STAGE_DIRS.get(notebook_stem, notebook_stem)


@dataclass
class Stage:
    """What a notebook needs: the config, its run folder, its own output folder and the figures folder."""

    cfg: Config
    run_dir: Path
    out_dir: Path
    figures_dir: Path

    def output_of(self, notebook_stem: str) -> Path:
        """The output folder of another (earlier) stage in the same run."""
        return self.run_dir / stage_dir_name(notebook_stem)


def open_stage(notebook_stem: str, config: str = "tiny", run_dir: Optional[str] = None,
               overrides: Optional[dict[str, Any]] = None, params: Optional[dict[str, Any]] = None) -> Stage:
    """Load and validate the config, seed Python's RNGs, and create the stage's output folder.

    ``params`` maps dotted config keys to a notebook's stage-specific parameters
    (``{"contamination.threshold": threshold}``); a value of None means "use the config's".
    """
    merged = dict(overrides or {})
    merged.update({k: v for k, v in (params or {}).items() if v is not None})
    cfg = load_config(config, merged)
    seed_everything(cfg.run.seed)
    rd = resolve_path(run_dir) if run_dir else cfg.run_dir()
    out = rd / stage_dir_name(notebook_stem)
    out.mkdir(parents=True, exist_ok=True)
    figs = cfg.figures_dir()
    figs.mkdir(parents=True, exist_ok=True)
    return Stage(cfg=cfg, run_dir=rd, out_dir=out, figures_dir=figs)


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
