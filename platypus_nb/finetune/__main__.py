"""Entry point of each process that ``accelerate launch`` starts: ``python -m platypus_nb.finetune <job.json>``."""

import json
import sys
from pathlib import Path

from platypus_nb.finetune.trainer import run_training

if __name__ == "__main__":
    run_training(json.loads(Path(sys.argv[1]).read_text()))
