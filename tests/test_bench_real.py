"""bench/real_train.py and bench/real_eval.py at a tiny size, so the real-model benchmarks cannot rot.

The model is a tiny random Llama with SmolLM2-135M-Instruct's tokenizer and chat template
(`build_real_tiny_model_dir`); every side runs in its own process, as in the full benchmark. Skips, naming
what is missing, without trl / lm-eval (the `test` extra installs both), the SmolLM2 GGUF package or the
shared GSM8K files.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from helpers import REPO, cpu_env, held_port


def _needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[test]' (or '.[bench]') installs it")


@pytest.fixture(scope="module")
def smol_tiny(tmp_path_factory) -> str:
    from safeft.data.shared import shared_file
    from safeft.model_import import check_model_name, resolve_model
    from safeft.tiny import build_real_tiny_model_dir

    problem = check_model_name("smollm2-135m-instruct")
    if problem:
        pytest.skip(f"SmolLM2's tokenizer comes from its GGUF package: {problem}")
    if not (shared_file("gsm8k", "train.jsonl") and shared_file("gsm8k", "test.jsonl")):
        pytest.skip("shared GSM8K train/test files not found (set SAFEFT_SHARED_DATA)")
    return build_real_tiny_model_dir(resolve_model("smollm2-135m-instruct"), str(tmp_path_factory.mktemp("smol") / "m"))


def _run(script: str, *args: str) -> None:
    """Run a benchmark as CI meets it: its caller's environment still names a process group (rank 0 of 1 at a
    port that is held), as after an in-process test joined one. No side may inherit it (CI failed on this:
    the safeft and lm-eval children rendezvoused at the held port, EADDRINUSE)."""
    with held_port() as port:
        stale = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}
        r = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=REPO, env=cpu_env(**stale),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-6000:]


@pytest.mark.slow
def test_real_train_tiny(smol_tiny, tmp_path):
    """Every side trains every document once, and the same math gives the same held-out loss; one-process sides
    run in pairs (the default)."""
    _needs("trl")
    out = tmp_path / "real_train.json"
    sides = "safeft,trl-packed,hf-padded,trl-padded,safeft-2rank,safeft-zero2"
    _run("real_train.py", "--model", smol_tiny, "--lengths", "256", "--repeats", "1", "--steps", "2",
         "--tokens-per-step", "512", "--heldout", "3", "--lr", "1e-3", "--sides", sides, "--out", str(out))
    record = json.loads(out.read_text())
    plan = record["plans"]["256"]
    runs = {r["side"]: r for r in record["runs"]}
    assert set(runs) == set(sides.split(","))
    assert runs["safeft"]["ran_with"] == ["trl-packed"] and runs["safeft-2rank"]["ran_with"] == []
    base = plan["base_heldout_loss"]
    for side, r in runs.items():
        assert plan["real_tokens"] <= r["tokens_total"] <= plan["real_tokens"] + plan["rows_per_step"], side
        assert r["steps"] >= 2 and r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0, side
        assert r["heldout_loss"] < base, f"{side} did not train: {r['heldout_loss']} vs {base} before"
    # stage 0 or ZeRO-2, one process or two ranks: the same rows per step, the same mean-token loss
    for other in ("safeft-zero2", "safeft-2rank"):
        assert runs["safeft"]["heldout_loss"] == pytest.approx(runs[other]["heldout_loss"], abs=2e-3), other
    losses = [r["heldout_loss"] for r in runs.values()]
    assert max(losses) - min(losses) < 0.5 * (base - max(losses)), losses  # agreement well inside the gain
    assert out.with_suffix(".md").is_file()


@pytest.mark.slow
def test_real_eval_tiny(smol_tiny, tmp_path):
    """Every tool answers every question from the same prompt; one fp32 batch gives the same completions."""
    _needs("lm_eval")
    out = tmp_path / "real_eval.json"
    _run("real_eval.py", "--model", smol_tiny, "--n", "4", "--max-new", "6", "--dtype", "float32",
         "--out", str(out))
    record = json.loads(out.read_text())
    runs = {r["side"]: r for r in record["runs"]}
    assert set(runs) == {"safeft", "safeft-2replicas", "lm-eval", "naive"}
    assert runs["safeft"]["ran_with"] == ["lm-eval"] and runs["naive"]["ran_with"] == []  # pairs, by default
    assert all(len(r["completions"]) == 4 and r["questions_per_s"] > 0 for r in runs.values())
    assert record["lm_eval_prompts_equal_safeft"] == 4  # lm-eval's chat rendering is ours, character for character
    assert record["settings"]["batch"] == 4  # safeft's engine puts all 4 in one batch; the others get that size
    for pair in ("naive vs safeft", "lm-eval vs safeft"):  # same batch, same fp32 numerics: same text
        assert record["agreement"][pair]["identical"] == 4, record["agreement"]
    assert {"exact_match_strict", "exact_match_flexible"} <= set(record["summary"][0])


def test_sides_pair_up_in_the_order_given():
    """One-process sides two at a time in the order given, a two-process side alone; the odd one out alone."""
    sys.path.insert(0, str(REPO / "bench"))
    from real_common import slots

    plan = slots(["safeft", "lm-eval", "naive", "safeft-2replicas"], {"safeft-2replicas": 2}, pair=True)
    assert plan == [["safeft", "lm-eval"], ["naive"], ["safeft-2replicas"]]
    assert slots(["a", "b", "c"], {}, pair=False) == [["a"], ["b"], ["c"]]

