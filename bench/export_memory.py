"""Peak CPU memory of a Hugging Face export against model size: streaming writer vs whole-model consolidation.

    python bench/export_memory.py --out /tmp/export_memory.json        # CPU, random Llama models

Each measurement runs in a fresh process: it builds a random-initialised Llama (fp32, what rank 0 holds
under ZeRO-2), resets the peak-RSS mark (`echo 5 > /proc/self/clear_refs`), exports it as bf16 and reads
VmHWM: peak = VmHWM - RSS before the export. Large blocks are mmap'ed (MALLOC_MMAP_THRESHOLD_) so freed
memory leaves RSS. "stream" is safeft.export.export_from_engine (one unit gathered and one shard held at
a time; --shard-mb); "consolidated" is what it replaced: the full 16-bit state dict built first, then
written (`_zero3_consolidated_16bit_state_dict` / `module.state_dict()` + save_torch_state_dict).

`--offline` measures `safeft export CKPT OUT` instead: a 1-rank ZeRO-2 or ZeRO-3 checkpoint of the same
model is written first (its own process, gloo, torch AdamW states), then "offline-full" (the old path:
`get_fp32_state_dict_from_zero_checkpoint` materialised, cast to bf16, written) against "offline-lazy"
(`safeft.export.export_checkpoint`: DeepSpeed's lazy mode, one tensor merged and written at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from repo_root import REPO
SIZES = {"70M": dict(hidden=512, layers=8, intermediate=1536), "270M": dict(hidden=1024, layers=16,
                                                                             intermediate=2816)}


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_mib(export) -> float:
    """MiB that `export()` added to the peak RSS (VmHWM, reset first through clear_refs)."""
    before = _kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    export()
    return (_kib("VmHWM") - before) / 1024


def child(size: str, mode: str, shard_mb: int, out_dir: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SIZES[size]
    config = LlamaConfig(vocab_size=32000, hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                         num_hidden_layers=s["layers"], num_attention_heads=8, num_key_value_heads=8)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)  # fp32
    n = sum(p.numel() for p in model.parameters())

    def export():
        if mode == "stream":
            from safeft.export import export_from_engine

            export_from_engine(model, None, out_dir, {}, torch.bfloat16, 2, 0, max_shard_bytes=shard_mb * 2**20)
        else:
            from huggingface_hub import save_torch_state_dict

            state = {k: v.detach().to("cpu", torch.bfloat16).clone() for k, v in model.state_dict().items()}
            os.makedirs(out_dir)
            save_torch_state_dict(state, out_dir, max_shard_size=f"{shard_mb}MB")

    return {"size": size, "params": n, "bf16_bytes": 2 * n, "mode": mode, "shard_mb": shard_mb,
            "peak_mib": _peak_mib(export)}


def write_checkpoint(size: str, root: str, stage: int = 2) -> dict:
    """A 1-rank ZeRO-2 or ZeRO-3 checkpoint of a random Llama laid out as safeft train leaves it (hf/, tag, latest)."""
    import deepspeed
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from safeft.io import write_json
    from safeft.loss import CausalLMWithLoss
    from safeft.tiny import train_tokenizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("BENCH_PORT", "29533"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="gloo")
    s = SIZES[size]
    config = LlamaConfig(vocab_size=32000, hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                         num_hidden_layers=s["layers"], num_attention_heads=8, num_key_value_heads=8)
    torch.manual_seed(0)
    model = CausalLMWithLoss(LlamaForCausalLM(config))  # the module safeft train checkpoints
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ds = {"train_micro_batch_size_per_gpu": 1, "steps_per_print": 10**9,
          "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    engine.save_checkpoint(root, tag="global_step1")
    write_json(os.path.join(root, "global_step1", "safeft_state.json"), {"step": 1})
    config.save_pretrained(os.path.join(root, "hf"))
    train_tokenizer().save_pretrained(os.path.join(root, "hf"))
    return {"params": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())}


class AnonPeak:
    """Peak anonymous RSS (RssAnon, sampled every 5 ms): VmHWM also counts the pages of memory-mapped files
    (DeepSpeed maps the optimizer states), which the kernel can drop under pressure; RssAnon it cannot."""

    def __enter__(self):
        import threading

        self.before, self.peak, self.stop = _kib("RssAnon"), 0, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, _kib("RssAnon"))

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, _kib("RssAnon"))
        self.mib = (self.peak - self.before) / 1024


def child_offline(mode: str, root: str, shard_mb: int, out_dir: str) -> dict:
    with AnonPeak() as anon:
        row = _offline_export(mode, root, shard_mb, out_dir)
    return {**row, "anon_peak_mib": anon.mib}


def _offline_export(mode: str, root: str, shard_mb: int, out_dir: str) -> dict:
    import torch

    def export():
        if mode == "offline-lazy":
            from safeft.export import export_checkpoint

            export_checkpoint(root, out_dir, "bfloat16", max_shard_bytes=shard_mb * 2**20)
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
            from huggingface_hub import save_torch_state_dict

            state = get_fp32_state_dict_from_zero_checkpoint(root, "global_step1")
            state = {k: v.to(torch.bfloat16) for k, v in state.items()}
            os.makedirs(out_dir)
            save_torch_state_dict(state, out_dir, max_shard_size=f"{shard_mb}MB")

    return {"mode": mode, "shard_mb": shard_mb, "peak_mib": _peak_mib(export)}


def offline_rows(args, env) -> list[dict]:
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "checkpoints")
            made = subprocess.run([sys.executable, __file__, "--write-checkpoint", size, ckpt,
                                   "--zero-stage", str(args.zero_stage)], env=env,
                                  capture_output=True, text=True, check=True)
            n = json.loads(made.stdout.strip().splitlines()[-1])["params"]
            for mode in ("offline-full", "offline-lazy"):
                out = subprocess.run([sys.executable, __file__, "--shard-mb", str(args.shard_mb), "--child-offline",
                                      mode, ckpt, os.path.join(tmp, mode)], env=env, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
                row = {"size": size, "params": n, "bf16_bytes": 2 * n, "zero_stage": args.zero_stage,
                       **json.loads(out.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(f"{size:>5} {n / 1e6:7.1f}M params  ZeRO-{args.zero_stage}  bf16 {2 * n / 2**20:7.0f} MiB  "
                      f"{mode:<13} peak +{row['peak_mib']:7.0f} MiB (anonymous +{row['anon_peak_mib']:7.0f} MiB)", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shard-mb", type=int, default=64)
    p.add_argument("--sizes", nargs="+", default=list(SIZES))
    p.add_argument("--out", default=None)
    p.add_argument("--offline", action="store_true", help="measure safeft export of a DeepSpeed checkpoint")
    p.add_argument("--zero-stage", type=int, default=2, choices=(2, 3), help="the checkpoint's ZeRO stage (--offline)")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--child-offline", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--write-checkpoint", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        size, mode, out_dir = args.child
        print(json.dumps(child(size, mode, args.shard_mb, out_dir)))
        return
    if args.child_offline:
        print(json.dumps(child_offline(args.child_offline[0], args.child_offline[1], args.shard_mb,
                                       args.child_offline[2])))
        return
    if args.write_checkpoint:
        print(json.dumps(write_checkpoint(*args.write_checkpoint, stage=args.zero_stage)))
        return
    rows = []
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    for size in ([] if args.offline else args.sizes):
        for mode in ("consolidated", "stream"):
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run([sys.executable, __file__, "--shard-mb", str(args.shard_mb), "--child", size,
                                      mode, os.path.join(tmp, "export")], env=env, capture_output=True, text=True,
                                     check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{size:>5} {row['params'] / 1e6:7.1f}M params  bf16 {row['bf16_bytes'] / 2**20:7.0f} MiB  "
                  f"{mode:<13} peak +{row['peak_mib']:7.0f} MiB", flush=True)
    if args.offline:
        rows = offline_rows(args, env)
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump({"shard_mb": args.shard_mb, "rows": rows}, f, indent=2)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
