"""Wall time and peak resident memory of a merge, the numbers merge_report.json records."""

from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path
from typing import Any, Iterator

import torch

class PeakMemory:
    """Peak resident memory (MiB) of this process over a ``with`` block.

    On Linux the kernel's high-water mark is reset on entry (``/proc/self/clear_refs``), so the peak is the block's
    own; elsewhere it falls back to the process's lifetime peak (``ru_maxrss``) and says so in ``scope``.
    """

    def __enter__(self) -> "PeakMemory":
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.scope = "block"
        except OSError:
            self.scope = "process"
        self.before_mib = _status_kib("VmRSS") / 1024 if self.scope == "block" else float("nan")
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
        if self.scope == "block":
            self.peak_mib = _status_kib("VmHWM") / 1024
        else:
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "peak_rss_mib": round(self.peak_mib, 1),
                "rss_before_mib": round(self.before_mib, 1), "peak_rss_scope": self.scope}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run torch's arithmetic on one thread for the block, then restore the setting.

    A merge's arithmetic is one small matmul and a few elementwise passes per tensor, bound by memory and disk;
    intra-op threads only add synchronisation (on a shared 2-core machine SmolLM2's merge took 15 s with 2 threads
    and 2 s with 1).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
