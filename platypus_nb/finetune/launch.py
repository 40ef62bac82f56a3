"""``world_size > 1``: the same Trainer in N processes through ``accelerate launch``.

The job goes to the processes as a JSON file; each runs :func:`platypus_nb.finetune.trainer.run_training`. Without
CUDA the processes form a gloo group on the CPU (accelerate's MULTI_CPU), which is how the tests check DDP here.
The accelerate config file is ``finetune.accelerate_config`` (FSDP / DeepSpeed ZeRO-3 files for 13B / 70B are in
``configs/accelerate/``), or plain DDP.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from platypus_nb.config import FinetuneConfig, resolve_path
from platypus_nb.finetune.trainer import TrainJob
from platypus_nb.paths import CONFIGS_DIR, PROJECT_ROOT

DDP_CONFIG = CONFIGS_DIR / "accelerate" / "ddp.yaml"
LOG_TAIL_CHARS = 4000


def launch_command(job_path: Path, cfg: FinetuneConfig, port: int) -> list[str]:
    config_file = resolve_path(cfg.accelerate_config) if cfg.accelerate_config else DDP_CONFIG
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "--num_processes", str(cfg.world_size), "--main_process_port", str(port),
            "-m", "platypus_nb.finetune", str(job_path)]


def launch_processes(job: TrainJob, cfg: FinetuneConfig) -> None:
    """Run the job in ``cfg.world_size`` processes; their output goes to ``out_dir/launch.log``."""
    out_dir = Path(job.out_dir)
    job_path = job.save(out_dir / "train_job.json")
    log_path = out_dir / "launch.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
    with open(log_path, "w") as log:
        proc = subprocess.run(launch_command(job_path, cfg, _free_port()), stdout=log, stderr=subprocess.STDOUT,
                              cwd=PROJECT_ROOT, env=env)
    if proc.returncode != 0:
        tail = log_path.read_text()[-LOG_TAIL_CHARS:]
        raise RuntimeError(f"accelerate launch with {cfg.world_size} processes failed (exit {proc.returncode}); "
                           f"full log in {log_path}; its end:\n{tail}")


def _free_port() -> int:
    """A free TCP port for the process group, so parallel runs on one machine do not collide on 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

