"""Checkpoints: DeepSpeed engine state + client state + per-rank RNG, published atomically.

Layout under `<run_dir>/checkpoints/`: one directory per tag (`step00000012`), `latest` naming the last
complete one, `hf/` (config + tokenizer, for offline export) and `safeft_run.json`. Every rank writes its
shard with `save_latest=False`; after a barrier rank 0 moves `latest` (temp + rename), so a crash while
saving leaves the previous checkpoint as the one that resumes. RNG states are JSON, never pickles.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from typing import Optional

from safeft.errors import SafeftError
from safeft.io import read_json, write_json, write_text

TAG_RE = re.compile(r"^step(\d+)$")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0
    consumed_samples: int = 0  # packed rows, all ranks
    data_seed: int = 0
    world_size: int = 1
    zero_stage: Optional[int] = None  # None: a checkpoint from before stage 0 existed (ZeRO-2 or -3)


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def rng_state() -> dict:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def latest_tag(root: str) -> Optional[str]:
    path = os.path.join(root, "latest")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        tag = f.read().strip()
    return tag if os.path.isdir(os.path.join(root, tag)) else None


def locate(path: str) -> tuple[str, str]:
    """(root, tag) for a checkpoints root (with `latest`) or one tag directory."""
    if os.path.isfile(os.path.join(path, "latest")):
        tag = latest_tag(path)
        if tag is None:
            raise SafeftError(f"checkpoint {path!r}: 'latest' names a directory that does not exist")
        return path, tag
    if os.path.isfile(os.path.join(path, "safeft_state.json")):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(os.path.normpath(path))
    raise SafeftError(f"checkpoint {path!r}: expected a checkpoints directory with 'latest' or one step directory")


def save(engine, root: str, state: TrainState, rank: int, keep_last: int, barrier, tag: Optional[str] = None,
         publish: bool = True) -> str:
    """Every rank calls this; returns the tag directory. `publish=False` (the safety gate's passing checkpoints,
    tagged `safe-stepN`) leaves `latest` and the keep_last pruning alone: resume never picks it up."""
    tag = tag or tag_for(state.step)
    from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                UNIVERSAL_CHECKPOINT_VERSION_VALUE)

    # The universal-checkpoint marker lets ds_to_universal convert this checkpoint for another world size.
    client = {"safeft": asdict(state),
              UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
    engine.save_checkpoint(root, tag, client_state=client, save_latest=False)
    write_json(os.path.join(root, tag, f"rng_rank{rank}.json"), rng_state())
    barrier()  # every shard is on disk before `latest` moves
    if rank == 0:
        write_json(os.path.join(root, tag, "safeft_state.json"), asdict(state))
        if publish:
            write_text(os.path.join(root, "latest"), tag)
            _prune(root, keep_last, keep=tag)
    barrier()
    return os.path.join(root, tag)


def _prune(root: str, keep_last: int, keep: str) -> None:
    tags = sorted(t for t in os.listdir(root) if TAG_RE.match(t) and os.path.isdir(os.path.join(root, t)))
    for old in [t for t in tags if t != keep][: max(0, len(tags) - keep_last)]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
        shutil.rmtree(os.path.join(root, f"{old}_universal"), ignore_errors=True)


def drop_after_export(cfg) -> Optional[str]:
    """`train.keep_checkpoints: false`: delete <run_dir>/checkpoints once <run_dir>/export is complete (the export
    directory is renamed into place whole). Returns the deleted directory, or None when nothing was."""
    root = os.path.join(cfg.run_dir, "checkpoints")
    done = os.path.isfile(os.path.join(cfg.run_dir, "export", "safeft_run.json"))
    if cfg.train.keep_checkpoints or not done or not os.path.isdir(root):
        return None
    shutil.rmtree(root)
    return root


def read_state(root: str, tag: str) -> TrainState:
    return TrainState(**read_json(os.path.join(root, tag, "safeft_state.json")))


# Above this size a checkpoint is not converted inside a training job (every other rank would wait in a
# collective for the whole conversion): the job stops and names the offline command instead.
IN_JOB_UNIVERSAL_MAX_BYTES = 4 * 2**30


def universal_tag(tag: str) -> str:
    return f"{tag}_universal"


def has_universal(root: str, tag: str) -> bool:
    return os.path.isfile(os.path.join(root, universal_tag(tag), "safeft_state.json"))


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def to_universal(root: str, tag: str, workers: int = 1) -> str:
    """Convert a checkpoint for another world size with DeepSpeed's universal format (once); returns its tag.
    A stage-0 checkpoint needs none: it holds the whole optimizer state, which loads at any world size.

    `workers` extract and merge processes (DeepSpeed's ds_to_universal). Run offline with
    `safeft ckpt to-universal`; load the result with `{"checkpoint": {"load_universal": true}}`.
    """
    from argparse import Namespace

    from deepspeed.checkpoint import ds_to_universal

    if read_state(root, tag).zero_stage == 0:
        raise SafeftError(f"checkpoint {os.path.join(root, tag)!r} was saved with train.zero_stage: 0; it holds the "
                          "whole optimizer state and resumes at any world size as it is: nothing to convert")
    uni = universal_tag(tag)
    if has_universal(root, tag):
        return uni
    shutil.rmtree(os.path.join(root, uni), ignore_errors=True)  # a conversion that crashed half-way
    workers = max(1, int(workers))
    ds_to_universal.main(Namespace(input_folder=os.path.join(root, tag), output_folder=os.path.join(root, uni),
                                   num_extract_workers=workers, num_merge_workers=workers, keep_temp_folder=False,
                                   strict=True, inject_missing_state=True))
    for name in sorted(n for n in os.listdir(os.path.join(root, tag)) if n.startswith("rng_rank")):
        shutil.copy2(os.path.join(root, tag, name), os.path.join(root, uni, name))
    shutil.copy2(os.path.join(root, tag, "safeft_state.json"), os.path.join(root, uni, "safeft_state.json"))
    return uni


def load(engine, root: str, tag: str, rank: int) -> TrainState:
    path, client = engine.load_checkpoint(root, tag, load_module_strict=True)
    if path is None:
        raise SafeftError(f"checkpoint {os.path.join(root, tag)!r}: DeepSpeed could not load it")
    state = TrainState(**client["safeft"])
    rng_file = os.path.join(root, tag, f"rng_rank{rank}.json")
    if os.path.isfile(rng_file):  # a rank that did not exist in the saved run keeps its seeded state
        set_rng_state(read_json(rng_file))
    return state
