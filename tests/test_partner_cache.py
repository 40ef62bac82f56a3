"""Cached stand-in partners are verified by sha256 before reuse: a truncated or altered file is named and rebuilt."""

from __future__ import annotations

import dataclasses
import json

from platypus_nb.config import load_config
from platypus_nb.merge.partners import PARTNER_RECORD, build_partner


def test_a_truncated_cached_partner_is_named_and_rebuilt(tiny_llama_dir, tmp_path, capsys):
    cfg = load_config("tiny")
    spec = dataclasses.replace(cfg.merge.partners[0], build_rows=8, build_steps=1, build_batch_size=2,
                               build_cutoff_len=96)
    build = dict(spec=spec, base_model=str(tiny_llama_dir), finetune=cfg.finetune, seed=0, cache_root=tmp_path)
    first = build_partner(**build)
    assert not first.cached and build_partner(**build).cached

    weights = first.model_dir / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:len(good) // 2])
    capsys.readouterr()
    rebuilt = build_partner(**build)
    assert f"cached partner {spec.name}: {weights} is missing or no longer matches" in capsys.readouterr().out
    assert not rebuilt.cached and weights.read_bytes() == good  # the build is seeded: the same model again

    from platypus_nb.merge.partners import damaged_partner_file

    folder = first.model_dir.parent
    recorded = json.loads((folder / PARTNER_RECORD).read_text())["files"]
    assert {"model/model.safetensors", "adapter/adapter_model.safetensors"} <= set(recorded)
    assert damaged_partner_file(folder) is None
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    assert damaged_partner_file(folder) == (f"{folder / 'adapter' / 'adapter_model.safetensors'} is missing or no "
                                            f"longer matches its recorded sha256")
