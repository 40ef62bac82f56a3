"""Entry point of each process that ``accelerate launch`` starts: ``python -m platypus_nb.finetune <job.json>``."""

import sys

from platypus_nb.finetune.trainer import TrainJob, run_training

if __name__ == "__main__":
    run_training(TrainJob.load(sys.argv[1]))
