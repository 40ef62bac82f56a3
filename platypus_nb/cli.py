"""``platypus-nb``: run the pipeline, prepare assets, check a config.

Errors a user can fix (a bad config key, a missing asset, a failed step) print one line naming the problem and
exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from platypus_nb.assets import AssetError
from platypus_nb.config import ConfigError
from platypus_nb.runner import RunnerError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="platypus-nb", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the notebooks in order with papermill")
    run.add_argument("--config", default="tiny", help="config name in configs/ or a YAML path (default: tiny)")
    run.add_argument("--steps", default=None, help="comma-separated step numbers or names, e.g. 01,03")
    run.add_argument("--force", action="store_true",
                     help="re-run the selected steps even when nothing changed (and set an unreadable manifest aside)")
    run.add_argument("--verify", action="store_true",
                     help="re-hash every recorded output before trusting it (default: size and modification time)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="config override with a dotted key, e.g. -p finetune.learning_rate=1e-4 (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    assets = sub.add_parser("assets", help="convert the base model, check data files and the embedding model")
    assets.add_argument("--config", default="tiny")

    show = sub.add_parser("config", help="validate a config and print it resolved, as JSON")
    show.add_argument("--config", default="tiny")
    show.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    return p


def _prepare_assets(config: str) -> None:
    from platypus_nb.assets import embedding_model_path, resolve_model
    from platypus_nb.config import load_config
    from platypus_nb.runner import data_hashes

    cfg = load_config(config)
    print(f"base model {cfg.model.base}: {resolve_model(cfg.model.base)}")
    print(f"embedding model {cfg.embeddings.model}: {embedding_model_path(cfg.embeddings.model)}")
    print(f"data files verified: {len(data_hashes())}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from platypus_nb.runner import run_pipeline

            steps = [s.strip() for s in args.steps.split(",") if s.strip()] if args.steps else None
            manifest = run_pipeline(args.config, steps=steps, force=args.force, overrides=args.param,
                                    progress=not args.quiet, verify=args.verify)
            done = {k: v.get("status") for k, v in manifest["steps"].items()}
            print(f"run {manifest['run_name']}: {json.dumps(done)}")
        elif args.command == "assets":
            _prepare_assets(args.config)
        elif args.command == "config":
            from platypus_nb.config import load_config

            print(json.dumps(load_config(args.config, args.param).to_dict(), indent=2))
    except (ConfigError, AssetError, RunnerError) as e:
        print(f"platypus-nb: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
