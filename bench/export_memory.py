"""Peak CPU memory of a Hugging Face export against model size: streaming writer vs whole-model consolidation.

    python bench/export_memory.py --out /tmp/export_memory.json        # CPU, random Llama models

Each measurement runs in a fresh process: it builds a random-initialised Llama (fp32, what rank 0 holds
under ZeRO-2), resets the peak-RSS mark (`echo 5 > /proc/self/clear_refs`), exports it as bf16 and reads
VmHWM: peak = VmHWM - RSS before the export. Large blocks are mmap'ed (MALLOC_MMAP_THRESHOLD_) so freed
memory leaves RSS. "stream" is safeft.export.export_from_engine (one unit gathered and one shard held at
a time; --shard-mb); "consolidated" is what it replaced: the full 16-bit state dict built first, then
written (`_zero3_consolidated_16bit_state_dict` / `module.state_dict()` + save_torch_state_dict).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"70M": dict(hidden=512, layers=8, intermediate=1536), "270M": dict(hidden=1024, layers=16,
                                                                             intermediate=2816)}


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(size: str, mode: str, shard_mb: int, out_dir: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SIZES[size]
    config = LlamaConfig(vocab_size=32000, hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                         num_hidden_layers=s["layers"], num_attention_heads=8, num_key_value_heads=8)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)  # fp32
    n = sum(p.numel() for p in model.parameters())
    before = _kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if mode == "stream":
        from safeft.export import export_from_engine

        export_from_engine(None, model, None, out_dir, {}, torch.bfloat16, 2, 0, max_shard_bytes=shard_mb * 2**20)
    else:
        from huggingface_hub import save_torch_state_dict

        state = {k: v.detach().to("cpu", torch.bfloat16).clone() for k, v in model.state_dict().items()}
        os.makedirs(out_dir)
        save_torch_state_dict(state, out_dir, max_shard_size=f"{shard_mb}MB")
    peak = _kib("VmHWM") - before
    return {"size": size, "params": n, "bf16_bytes": 2 * n, "mode": mode, "shard_mb": shard_mb,
            "peak_mib": peak / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shard-mb", type=int, default=64)
    p.add_argument("--sizes", nargs="+", default=list(SIZES))
    p.add_argument("--out", default=None)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        size, mode, out_dir = args.child
        print(json.dumps(child(size, mode, args.shard_mb, out_dir)))
        return
    rows = []
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    for size in args.sizes:
        for mode in ("consolidated", "stream"):
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run([sys.executable, __file__, "--shard-mb", str(args.shard_mb), "--child", size,
                                      mode, os.path.join(tmp, "export")], env=env, capture_output=True, text=True,
                                     check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{size:>5} {row['params'] / 1e6:7.1f}M params  bf16 {row['bf16_bytes'] / 2**20:7.0f} MiB  "
                  f"{mode:<13} peak +{row['peak_mib']:7.0f} MiB", flush=True)
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump({"shard_mb": args.shard_mb, "rows": rows}, f, indent=2)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
