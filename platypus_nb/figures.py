"""Saving figures: PNG in the run's figures folder and beside the stage's outputs.

The project's ``figures/`` is what README.md shows, so only the default reproduction (``configs/tiny.yaml`` as it
is, run name and run folder unchanged: what ``make reproduce`` runs) refreshes it; any other run writes its figures
under its own run folder and leaves the checkout (and the git commit its manifest records) clean.
"""

from __future__ import annotations

from pathlib import Path

from platypus_nb.io import atomic_path

# The config `make reproduce` and `platypus-nb run` use by default.
DEFAULT_CONFIG = "tiny"


def figures_dir_for(cfg, run_dir: Path) -> Path:
    """Where a stage saves its figures.

    An explicit ``run.figures_dir`` is the user's choice and is used as given; with the default one, the project's
    ``figures/`` for the default reproduction and ``<run_dir>/figures`` for every other run.
    """
    from platypus_nb.config import load_config

    if cfg.run.figures_dir != type(cfg.run)().figures_dir:
        return cfg.figures_dir()
    default = load_config(DEFAULT_CONFIG)
    if cfg.to_dict() == default.to_dict() and Path(run_dir).resolve() == default.run_dir().resolve():
        return cfg.figures_dir()
    return Path(run_dir) / "figures"


def save_figure(fig, name: str, figures_dir: Path, stage_dir: Path | None = None, dpi: int = 120) -> Path:
    """Write ``<figures_dir>/<name>.png`` (and a copy in ``<stage_dir>/figures/``) atomically; return the first."""
    targets = [Path(figures_dir) / f"{name}.png"]
    if stage_dir is not None:
        targets.append(Path(stage_dir) / "figures" / f"{name}.png")
    for target in targets:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return targets[0]
