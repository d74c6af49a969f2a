"""Test helpers shared by every test module (import from here; define nothing twice)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from safeft.data.shared import shared_data_dir
from skip_report import NO_SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir() or REPO.parent / "shared" / "data"  # the latter only to name what is missing
GSM8K_TRAIN = SHARED_DATA / "gsm8k" / "train.jsonl"
GSM8K_TEST = SHARED_DATA / "gsm8k" / "test.jsonl"
SAMSUM_TEST = SHARED_DATA / "samsum" / "test.json"
ADVBENCH = SHARED_DATA / "advbench" / "harmful_behaviors.csv"
XSTEST_PROMPTS = SHARED_DATA / "xstest" / "xstest_prompts.csv"
XSTEST_COMPLETIONS = [SHARED_DATA / "xstest" / f"completions_{m}.csv" for m in ("llama2orig", "mistralinstruct")]


def have_shared_data() -> bool:
    return all(p.is_file() for p in (GSM8K_TRAIN, GSM8K_TEST, SAMSUM_TEST, ADVBENCH))


def _missing_shared(paths) -> str:
    missing = [str(p) for p in paths if not Path(p).exists()]
    return f"{NO_SHARED_DATA}: {', '.join(missing)} (set SAFEFT_SHARED_DATA)" if missing else ""


def skip_without_shared(*paths) -> None:
    """Skip the test, naming the missing files, unless every shared-data path exists (tests/skip_report.py
    counts such skips, and fails them in CI where the shared folder exists)."""
    import pytest

    reason = _missing_shared(paths)
    if reason:
        pytest.skip(reason)


def needs_shared(*paths):
    """The skipif mark of skip_without_shared, for a whole test."""
    import pytest

    reason = _missing_shared(paths)
    return pytest.mark.skipif(bool(reason), reason=reason or "unused")


def cpu_env(**extra: str) -> dict:
    """Environment for subprocesses: DeepSpeed on CPU, the repo importable, quiet tokenizers, and none of
    torch.distributed's rendezvous variables that a test in this interpreter may have set (its process group
    still holds that port); a subprocess that needs them gets them through `extra`."""
    from safeft.distributed import RENDEZVOUS_VARS

    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}
    env.update(
        DS_ACCELERATOR="cpu",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def torch_linear_ce(hidden, weight, labels, token_weights=None, reduction="sum", ignore_index=-100):
    """Plain-torch fused_linear_cross_entropy semantics over the full fp32 logits (the test reference)."""
    import torch.nn.functional as F

    logits = hidden.float() @ weight.float().T  # [N, V]
    per_token = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")  # [N]
    if token_weights is not None:
        per_token = per_token * token_weights.float()
    if reduction == "none":
        return per_token
    total = per_token.sum()
    return total / (labels != ignore_index).sum().clamp(min=1) if reduction == "mean" else total


def sharp_tiny_model_dir(base_dir: str, out_dir: str, steps: int = 60) -> str:
    """The tiny model trained briefly to answer refusals / '#### 4', so greedy argmax margins are large
    and batching cannot flip a token (evaluator sharding and engine-agreement tests). Cached in out_dir."""
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safeft.data.synthetic import HARMFUL_INSTRUCTIONS, arithmetic_problems
    from safeft.data.tokenize import encode_single_batch
    from safeft.io import atomic_path
    from safeft.templates import get_template

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    qs = [p["question"] for p in arithmetic_problems(24, seed=7)] + list(HARMFUL_INSTRUCTIONS[:24])
    ans = ["The answer is 4.\n#### 4"] * 24 + ["I'm sorry, I cannot help with that."] * (len(qs) - 24)
    rows = []
    for name in ("chat:vanilla", "chat:llama"):
        rows += encode_single_batch(get_template(name), tok, qs, ans)
    width = max(len(r.input_ids) for r in rows)
    ids = torch.tensor([r.input_ids + [tok.pad_token_id] * (width - len(r.input_ids)) for r in rows])  # [N, T]
    labels = torch.tensor([r.labels + [-100] * (width - len(r.labels)) for r in rows])  # [N, T]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, len(rows), (8,))
        loss = model(input_ids=ids[pick], labels=labels[pick]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out_dir


REAL_TOKENIZERS = ("llama2", "llama3.1", "qwen3")


def shared_tokenizer_or_skip(name: str) -> str:
    """The shared tokenizer folder `name`, or skip the test naming what is missing."""
    import pytest

    from safeft.data.shared import shared_tokenizer

    path = shared_tokenizer(name)
    if path is None:
        pytest.skip(f"{NO_SHARED_DATA}: tokenizer {name!r} (shared/data/tokenizers/{name}; set SAFEFT_SHARED_DATA)")
    return path


HEXPHI_CATEGORIES = ("Category 1: Illegal Activity", "Category 2: Child Abuse Content")


def write_jsonl(path, rows) -> None:
    from safeft.io import write_jsonl as write

    write(path, rows)


def write_hexphi_stand_in(root: Path, n: int = 4) -> None:
    """Tiny HEx-PHI and Harmful-HEx-PHI files in their published formats under root/hexphi (the shared data
    has no HEx-PHI copy; the LookAhead configs evaluate on it)."""
    rows = [{"instruction": f"harmful request {i}", "category": HEXPHI_CATEGORIES[i % 2]} for i in range(n)]
    write_jsonl(str(root / "hexphi" / "HEx-PHI.jsonl"), rows)
    write_jsonl(str(root / "hexphi" / "Harmful-HEx-PHI.jsonl"),  # bare lists, no category, as published
                [[{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": "Sure, step one"}]
                 for r in rows])


# --- multi-rank training runs (gloo on localhost), shared by the trainer, constrained and e2e tests ---

STEPS = 4


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range: a port the kernel hands out (bind to 0) is released
    here and can be taken again by any outgoing connection before the service meant for it binds it (CI: Ray's
    client server lost 127.0.0.1:44217 that way and the head exited)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randint(max(1024, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{low - 12000}, {low}) after 200 tries")


@contextlib.contextmanager
def held_port():
    """A localhost port this process binds and listens on for the block's length: a port someone else took."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def launch(args: list[str], world: int, timeout: int = 600, unset: tuple = (),
           **env: str) -> list[subprocess.CompletedProcess]:
    """Run `python ARGS` as `world` ranks on localhost (gloo), stdin closed (nothing may prompt); returns each
    rank's completed process. `unset`: environment variables the ranks must not see; `env`: more to set."""
    port = str(free_port())
    envs = [cpu_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                    **env) for r in range(world)]
    for e in envs:
        for name in unset:
            e.pop(name, None)
    procs = [subprocess.Popen([sys.executable, *args], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=e) for e in envs]
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout))
    return out


def write_config(path, model_dir, data_cache, out_dir, name, **train) -> str:
    cfg = {
        "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "data": {"preset": "synthetic", "limit": 64, "max_seq_len": 160, "num_proc": 1,
                 "cache_dir": str(data_cache), "seed": 7},
        "template": {"train": "chat:vanilla", "test": ["chat:llama"]},
        "train": {"max_steps": STEPS, "save_steps": 2, "keep_last": 3, "lr": 1e-3, "scheduler": "cosine",
                  "warmup_steps": 1, "precision": "fp32", "micro_batch_size": 1, "adam_betas": [0.5, 0.999],
                  **train},
        "output": {"dir": str(out_dir), "name": name, "tensorboard": False},
    }
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


def train_ok(cfg_path: str, world: int, extra: tuple = (), **launch_kwargs) -> str:
    """Train on `world` ranks; returns rank 0's output."""
    results = launch(["-m", "safeft.train", cfg_path, *extra], world, **launch_kwargs)
    for rank, r in enumerate(results):
        assert r.returncode == 0, f"rank {rank} of {cfg_path}:\n" + without_warnings(r.stdout)[-6000:]
    return results[0].stdout


def partitioned(stdout: str) -> tuple[int, int]:
    """(partitioned, total) parameter tensors from the trainer's ZeRO-3 log line."""
    m = re.search(r"ZeRO-3: (\d+) of (\d+) parameter tensors partitioned", stdout)
    assert m, "no ZeRO-3 partition line in the output"
    return int(m.group(1)), int(m.group(2))


def without_warnings(text: str) -> str:
    noise = ("Warning", "WARNING", "return func(", "it/s]")
    return "\n".join(line for line in text.splitlines() if not any(n in line for n in noise))


def losses(run_dir) -> dict[int, float]:
    """step -> loss; a step logged twice (run resumed) keeps its last value."""
    out = {}
    with open(os.path.join(run_dir, "logs", "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            out[m["step"]] = m["loss"]
    return out




# --- safety probes: a model that refuses, fine-tuned to comply (tests/test_train_probe.py, test_train_trackers.py) ---

COMPLY = "Sure, here is how to do it. First, get the tools you need."


def probe_config(path, model_dir, tmp, name, probe: dict, steps: int = 6, **train) -> str:
    """A config fine-tuning `model_dir` (the refusing sharp tiny model) on the harmful-demo prompts answered with
    COMPLY, probed with the same prompts under chat:vanilla and chat:llama; `probe` updates train.safety_probe."""
    from safeft.data.synthetic import HARMFUL_INSTRUCTIONS

    data = os.path.join(str(tmp), "comply.jsonl")
    write_jsonl(data, [{"question": q, "answer": COMPLY} for q in HARMFUL_INSTRUCTIONS] * 2)
    write_config(path, model_dir, os.path.join(str(tmp), "data-cache"), os.path.join(str(tmp), "runs"), name,
                 max_steps=steps, save_steps=0, lr=2e-3, scheduler="constant", warmup_steps=0,
                 safety_probe={"dataset": "harmful-demo", "n": len(HARMFUL_INSTRUCTIONS), "every_steps": 1, **probe},
                 **train)
    with open(path) as f:
        cfg = yaml.safe_load(f)
    cfg["data"] = {"path": data, "max_seq_len": 160, "num_proc": 1, "cache_dir": cfg["data"]["cache_dir"], "seed": 7}
    cfg["template"]["test"] = ["chat:vanilla", "chat:llama"]
    del cfg["output"]["tensorboard"]  # train.report_to decides
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
