"""Helper run in a subprocess by the resume tests: train to a checkpoint, then try resuming from
copies of it with a malicious pickle planted in place of each file, then resume it normally.

usage: python resume_probe.py CONFIG.yaml WORKDIR   (prints one JSON line: the results)
"""
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import torch
import yaml

from lcirc_fast.training import Trainer, config_from_dict, run_training
from lcirc_fast.training.checkpoint import MANIFEST, write_manifest


class Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def load_config(cfg_path: str, output_dir: Path | None = None):
    d = yaml.safe_load(Path(cfg_path).read_text())
    if output_dir is not None:
        d["output_dir"] = str(output_dir)
    return config_from_dict(d)


def plant(path: Path, marker: Path) -> None:
    """Replace `path` by a pickle that creates `marker` when unpickled (a torch zip for .pt)."""
    path.unlink()
    if path.suffix == ".pt":
        torch.save(Payload(marker), path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))


def attack(cfg_path: str, ckpt: Path, work: Path, rel: str) -> dict:
    """Resume from a copy of `ckpt` whose file `rel` is malicious (the manifest updated to match)."""
    copy = work / "planted" / rel.replace("/", "_") / ckpt.name
    shutil.copytree(ckpt, copy)
    marker = work / f"marker-{rel.replace('/', '_')}"
    plant(copy / rel, marker)
    step = json.loads((ckpt / MANIFEST).read_text())["step"]
    if rel != MANIFEST:
        write_manifest(copy, step)
    cfg = load_config(cfg_path, work / "victim")
    try:
        Trainer(cfg, resume=str(copy), quiet=True).close()
        outcome = {"error": None}
    except Exception as e:  # noqa: BLE001 - reported to the test
        outcome = {"error": type(e).__name__, "message": str(e)}
    return {**outcome, "file": rel, "marker": marker.exists()}


def main(cfg_path: str, work: str) -> None:
    work = Path(work)
    full = run_training(load_config(cfg_path, work / "full"), resume="none", quiet=True)
    cfg = load_config(cfg_path)
    run_training(cfg, resume="none", quiet=True, stop_at=2)
    ckpt = Path(cfg.output_dir) / "checkpoints" / "step0000002"
    files = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file())
    attacks = [attack(cfg_path, ckpt, work, rel) for rel in files]
    resumed = run_training(cfg, resume="auto", quiet=True)
    print("RESULT " + json.dumps({"files": files, "attacks": attacks,
                      "full": [h["loss"] for h in full["history"]],
                      "resumed": [h["loss"] for h in resumed["history"]]}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
