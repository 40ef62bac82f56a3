"""Step 04 benchmark: the streamed merge vs the original merge.py path, wall time and peak memory.

The original ``merge.py`` loads the whole target model, wraps it in ``PeftModel.from_pretrained``, calls
``merge_and_unload()`` and ``save_pretrained``. Ours streams tensors from the safetensors shards. Each merge runs in
a fresh Python process and reports its own peak resident memory (the kernel's ``VmHWM``; not the parent's
``ru_maxrss`` of children, which on Linux includes the parent's memory at fork), so no run inherits another's
memory. Both write float32 (merge.py wrote float16 on GPU; on CPU float32 keeps the two outputs comparable, and
they are checked to agree).

Part 1: the real SmolLM2-135M saved in 100 MB shards, with a Platypus-recipe adapter (r = alpha = 16, MLP).
Part 2: random-weight Llama models of growing size (500 MB shards), to show how peak memory grows with model size.

Run: ``.venv/bin/python benchmarks/bench_merge.py`` (about 5-10 minutes on 2 cores). Writes
``benchmarks/results/merge.json`` and prints the markdown table of ``benchmarks/README.md``'s "Merging" section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "merge.json"
MLP = ["gate_proj", "up_proj", "down_proj"]
# Random Llama shapes for part 2 (Llama-2 vocabulary, untied embeddings): about 0.3, 0.6, 1.2 and 1.9 GiB in float32.
SIZES = [
    {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 16},
    {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 16},
    {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 20},
    {"hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 14},
]


# ----------------------------------------------------------------------------------------- the two merges


def original_merge(model_dir: str, adapter_dir: str, out_dir: str) -> None:
    """arielnlee/Platypus merge.py, on CPU: whole model in memory, peft merge, save_pretrained."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.save_pretrained(out_dir)
    if (Path(model_dir) / "tokenizer_config.json").is_file():
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)


def streamed_merge(model_dir: str, adapter_dir: str, out_dir: str) -> None:
    from platypus_nb.merge import merge_lora_into

    merge_lora_into(model_dir, adapter_dir, out_dir)


def imports_only(model_dir: str, adapter_dir: str, out_dir: str) -> None:
    """The floor both pay: Python with torch, transformers and peft imported."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401


METHODS = {"original": original_merge, "streamed": streamed_merge, "imports_only": imports_only}


def run_child(method: str, model_dir: Path, adapter_dir: Path, out_dir: Path) -> dict:
    """One merge in a fresh process; its wall time and its own peak RSS."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", method, str(model_dir), str(adapter_dir),
                           str(out_dir)], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{method} merge of {model_dir} failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"method": method, "merge_seconds": round(child["merge_seconds"], 2),
            "process_seconds": round(wall, 2), "peak_rss_mib": round(child["peak_rss_kib"] / 1024, 1)}


def _peak_rss_kib() -> int:
    """The kernel's high-water mark of this process's resident memory (``VmHWM``)."""
    return int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:")))


def child_main(method: str, model_dir: str, adapter_dir: str, out_dir: str) -> None:
    sys.path.insert(0, str(ROOT))
    import peft  # noqa: F401  (imported up front by both, so merge_seconds excludes import time)
    import torch  # noqa: F401

    # The streamed merge resets the high-water mark to measure itself (merge_report.json), so the import phase's
    # peak is read first: both methods are charged for their whole process.
    peak_before = _peak_rss_kib()
    start = time.perf_counter()
    METHODS[method](model_dir, adapter_dir, out_dir)
    seconds = time.perf_counter() - start
    print(json.dumps({"merge_seconds": seconds, "peak_rss_kib": max(peak_before, _peak_rss_kib())}))


# --------------------------------------------------------------------------------------------------- inputs


def write_adapter(model_dir: Path, out_dir: Path, seed: int) -> Path:
    """A Platypus-recipe adapter (r = alpha = 16 on the MLP) with random non-zero A and B, written directly."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    from platypus_nb.merge import tensor_entries

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for e in tensor_entries(model_dir):
        module = e.name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] in MLP:
            out_features, in_features = e.shape
            prefix = f"base_model.model.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(16, in_features, generator=generator) * 0.02
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, 16, generator=generator) * 0.02
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    LoraConfig(r=16, lora_alpha=16, target_modules=MLP, task_type="CAUSAL_LM").save_pretrained(out_dir)
    return out_dir


def write_random_llama(out_dir: Path, shape: dict, shard_mib: int = 500, seed: int = 0) -> Path:
    """A random-weight Llama in safetensors shards, written a shard at a time (never the whole model in memory)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, num_attention_heads=shape["hidden_size"] // 64,
                         num_key_value_heads=shape["hidden_size"] // 64, tie_word_embeddings=False, **shape)
    with torch.device("meta"):
        names = [(n, tuple(p.shape)) for n, p in LlamaForCausalLM(config).state_dict().items()]
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    generator = torch.Generator().manual_seed(seed)
    shards, current, size = [], {}, 0
    for name, shp in names:
        current[name] = torch.randn(shp, generator=generator) * 0.02
        size += current[name].numel() * 4
        if size >= shard_mib * 2**20:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out_dir / file, metadata={"format": "pt"})
        weight_map.update({k: file for k in shard})
    total = sum(t.numel() * 4 for s in shards for t in s.values())
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    return out_dir


def max_abs_difference(a: Path, b: Path) -> float:
    """Largest elementwise difference between two saved models' tensors (lm_head skipped when tied)."""
    from safetensors import safe_open

    def tensors(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(f, framework="pt") as st:
                out.update({k: st.get_tensor(k) for k in st.keys()})
        return out

    ta, tb = tensors(a), tensors(b)
    common = ta.keys() & tb.keys()
    if len(common) < len(ta) - 1:
        raise RuntimeError(f"{a} and {b} hold different tensors")
    return max((ta[k].float() - tb[k].float()).abs().max().item() for k in common)


def model_mib(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20, 1)


# ----------------------------------------------------------------------------------------------------- main


def compare(model_dir: Path, adapter_dir: Path, work: Path, label: str) -> dict:
    original = run_child("original", model_dir, adapter_dir, work / f"{label}-original")
    streamed = run_child("streamed", model_dir, adapter_dir, work / f"{label}-streamed")
    difference = max_abs_difference(work / f"{label}-original", work / f"{label}-streamed")
    for method in ("original", "streamed"):
        subprocess.run(["rm", "-rf", str(work / f"{label}-{method}")], check=True)
    from platypus_nb.merge import tensor_entries

    entries = tensor_entries(model_dir)
    return {"model": label, "model_mib": model_mib(model_dir), "shards": len({e.shard for e in entries}),
            "largest_tensor_mib": round(max(e.nbytes for e in entries) / 2**20, 1),
            "original": original, "streamed": streamed,
            "peak_rss_ratio": round(original["peak_rss_mib"] / streamed["peak_rss_mib"], 2),
            "time_ratio": round(original["merge_seconds"] / streamed["merge_seconds"], 2),
            "max_abs_difference": difference}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from platypus_nb.assets import resolve_model

    with tempfile.TemporaryDirectory(prefix="bench_merge_") as tmp:
        work = Path(tmp)
        floor = run_child("imports_only", work, work, work)
        smollm2 = work / "smollm2-sharded"
        base = resolve_model("smollm2-135m")
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).save_pretrained(smollm2,
                                                                                       max_shard_size="100MB")
        AutoTokenizer.from_pretrained(base).save_pretrained(smollm2)
        rows = [compare(smollm2, write_adapter(smollm2, work / "smollm2-adapter", seed=1), work,
                        "SmolLM2-135M (fp32)")]
        for i, shape in enumerate(SIZES):
            model = write_random_llama(work / f"random-{i}", shape)
            label = f"random Llama h{shape['hidden_size']} x{shape['num_hidden_layers']}"
            rows.append(compare(model, write_adapter(model, work / f"random-{i}-adapter", seed=2), work, label))
            subprocess.run(["rm", "-rf", str(model)], check=True)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "imports_only_peak_rss_mib": floor["peak_rss_mib"], "rows": rows}
    from platypus_nb.io import atomic_write_text

    atomic_write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))


def markdown_table(result: dict) -> str:
    floor = result["imports_only_peak_rss_mib"]
    lines = ["| model | size (MiB) | shards | largest tensor (MiB) | merge.py time (s) | streamed time (s) | "
             "time ratio | merge.py peak RSS (MiB) | streamed peak RSS (MiB) | RSS ratio | streamed peak above "
             "imports (MiB) | max abs difference |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        o, s = r["original"], r["streamed"]
        lines.append(f"| {r['model']} | {r['model_mib']:.0f} | {r['shards']} | {r['largest_tensor_mib']:.0f} | "
                     f"{o['merge_seconds']:.1f} | {s['merge_seconds']:.1f} | {r['time_ratio']:.2f} | "
                     f"{o['peak_rss_mib']:.0f} | {s['peak_rss_mib']:.0f} | {r['peak_rss_ratio']:.2f} | "
                     f"{s['peak_rss_mib'] - floor:.0f} | {r['max_abs_difference']:.1e} |")
    lines.append(f"\nPeak RSS of a process that only imports torch, transformers and peft: {floor:.0f} MiB.")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "MODEL", "ADAPTER", "OUT"))
    args = parser.parse_args()
    if args.child:
        child_main(*args.child)
    else:
        main()
