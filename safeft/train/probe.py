"""Safety probes during training: the harmful-answer rate of the model being trained, at step 0 and every
`train.safety_probe.every_steps` optimizer steps (and at the last step), and the gate on it.

Every rank generates its share of the (test template x prompt) items, item i on rank i % world, with the
DeepSpeed engine's own model, greedy, stopping at every end-of-turn id. Shares are padded with a dummy
item to the same length and cut into the same number of batches, so every rank runs the same number of
`generate` calls; under ZeRO-3 `synced_gpus=True` keeps their forward passes in step until all are done,
so no parameter all-gather waits for a rank that has finished. Rank 0 gathers the completions, judges them
with the evaluator's weight-free judges and writes one line per template to `logs/safety_curve.jsonl`
(harmful rate, n, Wilson 95% interval, the probe's seconds) and the completions to
`logs/safety_probe/stepNNNNNNNN.jsonl`.

The gate (`max_harmful`): `warn` logs a warning and marks the line `over_bound`; `stop` keeps a DeepSpeed
checkpoint of the last passing step (`checkpoints/safe-stepN`, outside `latest` and keep_last pruning) and
ends training at the first probe over the bound; the trainer then loads that checkpoint back on every rank
and exports it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from safeft import distributed as dist
from safeft.train import checkpoint as ckpt
from safeft.train.summary import append_curve, probe_totals, read_safety_curve, trim_curve

log = logging.getLogger("safeft.train")
SAFE_PREFIX = "safe-"  # checkpoints/safe-stepNNNNNNNN: the last step whose probe passed (action: stop)


def rank_share(total: int, world: int, rank: int) -> list[int]:
    """Item positions of `rank` (i % world == rank), padded with -1 (a dummy item) to ceil(total / world),
    so every rank runs the same number of generate calls."""
    mine = list(range(rank, total, world))
    return mine + [-1] * (math.ceil(total / world) - len(mine))


@dataclass
class Stop:
    """Why and where the gate stopped a run; `safe_step` None: no probe had passed (the base was over the bound)."""

    step: int
    why: str
    safe_step: Optional[int]
    safe_checkpoint: Optional[str]


class SafetyProbe:
    """Built once per run on every rank: the probe items (prompt ids per test template) and the generator."""

    def __init__(self, cfg, model, tokenizer, device, rank: int, world: int, zero_stage: int):
        from safeft.data.tokenize import encode_prompt
        from safeft.eval.generate import end_ids
        from safeft.eval.tasks import load_task
        from safeft.templates import canonical_name, get_template

        self.pc, self.cfg = cfg.train.safety_probe, cfg
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.rank, self.world = rank, world
        self.synced = zero_stage == 3 and world > 1  # ZeRO-3 forwards all-gather parameters: keep ranks in step
        task = load_task(self.pc.task())
        self.dataset, questions = task.source, task.questions
        self.templates = list(self.pc.templates or cfg.test_templates)
        self.items: list[tuple[str, str, list[int]]] = []  # (template, question, prompt ids)
        for name in self.templates:
            chat = canonical_name(name).startswith("chat-template")
            template = get_template(name, tokenizer=tokenizer, system=cfg.template.test_system if chat else None)
            self.items += [(name, q, list(encode_prompt(template, tokenizer, q))) for q in questions]
        self.end_ids = end_ids(model, tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.n = len(questions)

    def due(self, step: int, total: int) -> bool:
        return step % self.pc.every_steps == 0 or step == total

    # -- generation (every rank) -------------------------------------------------------------------
    def generate(self, compute_context: Callable[[], Any]) -> list[tuple[int, str]]:
        """(item position, completion) for this rank's share; the model goes back to its mode and cache setting."""
        import torch

        from safeft.eval.generate import finish_tokens, left_pad

        share = rank_share(len(self.items), self.world, self.rank)
        model, config = self.model, self.model.config
        was_training, use_cache, attn = model.training, config.use_cache, config._attn_implementation
        model.eval()
        config.use_cache = True  # training turns the KV cache off; generation needs it
        if attn not in ("sdpa", "eager", "flash_attention_2"):  # safeft's packed varlen kernel needs cu_seq_lens
            config._attn_implementation = "sdpa"
        out = []
        try:
            for start in range(0, len(share), self.pc.batch_size):
                chunk = share[start: start + self.pc.batch_size]
                ids, mask = left_pad([self.items[max(p, 0)][2] for p in chunk], self.pad)  # [B, L]; -1: item 0
                with torch.no_grad(), compute_context():
                    gen = model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                         max_new_tokens=self.pc.max_new_tokens, do_sample=False, temperature=None,
                                         top_p=None, top_k=None, eos_token_id=self.end_ids, pad_token_id=self.pad,
                                         use_cache=True, synced_gpus=self.synced)  # [B, L + new]
                for p, row in zip(chunk, gen[:, ids.shape[1]:].tolist()):
                    if p >= 0:
                        out.append((p, finish_tokens(row, self.end_ids, self.tokenizer, [])["completion"]))
        finally:
            config._attn_implementation, config.use_cache = attn, use_cache
            model.train(was_training)
        return out

    # -- judging (rank 0) --------------------------------------------------------------------------
    def judge(self, completions: list[str]) -> tuple[str, list[bool]]:
        """(judge name, harmful flag per completion): not refused by the rule judge (or no refusal keyword)."""
        from safeft.eval import judges

        if self.pc.judge == "keyword":
            name, items, _ = judges.keyword_judge(completions, self.cfg.eval.keyword_list)
            return name, [not it["keyword_refusal"] for it in items]
        name, items, _ = judges.refusal_judge(completions)
        return name, [not it["refusal"] for it in items]

    def rows(self, step: int, completions: list[str], seconds: float) -> tuple[list[dict], list[dict]]:
        """(one curve line per template, one record per item) for the completions in item order."""
        from safeft.eval.stats import wilson_ci

        judge, harmful = self.judge(completions)
        bound = self.pc.max_harmful
        lines, records = [], []
        for t, name in enumerate(self.templates):
            flags = harmful[t * self.n: (t + 1) * self.n]
            k = sum(flags)
            lo, hi = wilson_ci(k, self.n)
            rate = k / self.n
            lines.append({"step": step, "template": name, "harmful_rate": rate, "ci95": [round(lo, 4), round(hi, 4)],
                          "n": self.n, "harmful": k, "seconds": round(seconds, 3), "judge": judge,
                          "dataset": self.dataset, "max_new_tokens": self.pc.max_new_tokens,
                          "over_bound": bound is not None and rate > bound})
        for (name, question, _), completion, flag in zip(self.items, completions, harmful):
            records.append({"template": name, "prompt": question, "completion": completion, "harmful": flag})
        return lines, records


class SafetyGate:
    """Runs the probe at the due steps, writes and logs its results, and applies `max_harmful` / `action`.

    `probe_step(state)` is called on every rank; it returns a Stop (the same on every rank) when training must end.
    """

    def __init__(self, probe: SafetyProbe, engine, run_dir: str, metrics_log, compute_context: Callable[[], Any]):
        self.probe, self.engine, self.run_dir = probe, engine, run_dir
        self.metrics_log, self.compute_context = metrics_log, compute_context
        self.pc = probe.pc
        self.root = os.path.join(run_dir, "checkpoints")
        self.seconds = 0.0  # this invocation's probe time (resumed runs add the curve's earlier probes)
        self.save_seconds = 0.0  # this invocation's passing-checkpoint saves (action: stop)

    @classmethod
    def build(cls, r, start_step: int, metrics_log, compute_context) -> Optional["SafetyGate"]:
        if r.cfg.train.safety_probe is None:
            return None
        probe = SafetyProbe(r.cfg, r.hf_model, r.tokenizer, r.device, r.env.rank, r.env.world_size,
                            r.cfg.train.zero_stage)
        if r.env.is_main:
            trim_curve(r.cfg.run_dir, start_step)  # a resumed run probes its starting step again
            log.info("safety probe: %d prompts of %s x %d template(s) every %d steps, judge %s, up to %d new tokens",
                     probe.n, probe.dataset, len(probe.templates), probe.pc.every_steps, probe.pc.judge,
                     probe.pc.max_new_tokens)
        return cls(probe, r.engine, r.cfg.run_dir, metrics_log, compute_context)

    def due(self, step: int, total: int) -> bool:
        return self.probe.due(step, total)

    def probe_step(self, state) -> Optional[Stop]:
        t0 = time.perf_counter()
        mine = self.probe.generate(self.compute_context)
        shares = dist.gather_to_main(mine)
        over = None
        if shares is not None:  # rank 0
            completions = [""] * len(self.probe.items)
            for position, text in (pair for share in shares for pair in share):
                completions[position] = text
            seconds = time.perf_counter() - t0
            lines, records = self.probe.rows(state.step, completions, seconds)
            self._write(state.step, lines, records)
            over = [line for line in lines if line["over_bound"]]
        over = dist.broadcast_from_main(over)
        self.seconds += time.perf_counter() - t0
        if over and self.pc.action == "stop":
            return self._stop(state.step, over)
        if self.pc.action == "stop":
            t1 = time.perf_counter()
            self._keep_passing(state)
            self.save_seconds += time.perf_counter() - t1
        return None

    def _write(self, step: int, lines: list[dict], records: list[dict]) -> None:
        from safeft.io import write_jsonl

        append_curve(self.run_dir, lines)
        write_jsonl(os.path.join(self.run_dir, "logs", "safety_probe", f"{ckpt.tag_for(step)}.jsonl"), records)
        self.metrics_log.log_probe(lines, step)
        for line in lines:
            if line["over_bound"]:
                log.warning("safety probe at step %d: harmful rate %.3f on %s is over train.safety_probe.max_harmful "
                            "%.3f (action: %s)", step, line["harmful_rate"], line["template"], self.pc.max_harmful,
                            self.pc.action)

    def _keep_passing(self, state) -> None:
        """A checkpoint of this passing step, outside `latest` and pruning; the previous one is removed after."""
        tag = SAFE_PREFIX + ckpt.tag_for(state.step)
        ckpt.save(self.engine, self.root, state, self.probe.rank, 0, dist.barrier, tag=tag, publish=False)
        if self.probe.rank == 0:
            for old in safe_tags(self.root):
                if old != tag:
                    shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)
        dist.barrier()

    def _stop(self, step: int, over: list[dict]) -> Stop:
        worst = max(over, key=lambda line: line["harmful_rate"])
        why = (f"harmful rate {worst['harmful_rate']:.3f} on {worst['template']} (95% CI {worst['ci95']}, n "
               f"{worst['n']}, judge {worst['judge']}) is over train.safety_probe.max_harmful {self.pc.max_harmful}")
        tags = safe_tags(self.root)
        safe = tags[-1] if tags else None
        safe_step = ckpt.read_state(self.root, safe).step if safe else None
        log.warning("safety gate: stopping at step %d: %s; %s", step, why,
                    f"exporting step {safe_step}, the last probe under the bound" if safe else
                    "no probe was under the bound (the model was over it from the start): nothing to export")
        return Stop(step, why, safe_step, os.path.join(self.root, safe) if safe else None)

    def summary(self, train_seconds: float, step_seconds: float) -> dict:
        """The run summary's `safety_probe`: every probe of the curve (a resumed run's earlier ones included), their
        count and seconds, and this invocation's probe time against its training and optimizer-step time."""
        curve = read_safety_curve(self.run_dir)
        return {**probe_totals(curve), "seconds_this_invocation": round(self.seconds, 2),
                "share_of_train_time": round(self.seconds / max(train_seconds, 1e-9), 4),
                "share_of_step_time": round(self.seconds / max(step_seconds, 1e-9), 4),
                "passing_checkpoint_seconds": round(self.save_seconds, 2),
                "config": dataclasses.asdict(self.pc), "results": curve}


def safe_tags(root: str) -> list[str]:
    """The gate's passing checkpoints under `root`, oldest first (complete ones: safeft_state.json written)."""
    if not os.path.isdir(root):
        return []
    return sorted(t for t in os.listdir(root) if t.startswith(SAFE_PREFIX)
                  and os.path.isfile(os.path.join(root, t, "safeft_state.json")))
