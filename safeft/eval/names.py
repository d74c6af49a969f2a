"""Names shared by the config schema and the evaluator: task kinds, judges, judge prompts, the default
safety metric. One home, no imports from safeft, so config.py and safeft/eval/* depend on it one way."""

from __future__ import annotations

UTILITY_TASKS = ("gsm8k", "samsum", "generic")
SAFETY_TASKS = ("advbench", "harmful-demo", "instructions", "directharm4", "gsm-danger", "prefill", "hexphi")
REFUSAL_TASKS = ("xstest",)  # safe and unsafe prompts: refusal rates both ways (over-refusal)
LOSS_TASKS = ("answer-loss",)  # teacher-forced loss on reference answers: no generation
ALL_TASKS = UTILITY_TASKS + SAFETY_TASKS + REFUSAL_TASKS + LOSS_TASKS
# Tasks that cannot run without a file the user (or the shared data folder) provides.
NEEDS_PATH = ("generic", "instructions", "prefill", "hexphi", "xstest")


def task_kind(name: str) -> str:
    if name in LOSS_TASKS:
        return "loss"
    return "utility" if name in UTILITY_TASKS else ("refusal" if name in REFUSAL_TASKS else "safety")


CLASSIFIER_JUDGES = ("llama-guard", "harmbench")
WEIGHT_FREE_JUDGES = ("refusal", "keyword")  # rule / keyword proxies: every number says so
KNOWN_JUDGES = WEIGHT_FREE_JUDGES + ("http",) + CLASSIFIER_JUDGES
DEFAULT_JUDGES = ("refusal",)
# Keyword lists and judge rubrics are named where they are defined: safeft.eval.refusal.KEYWORD_LISTS and
# safeft.eval.judge_prompts.JUDGE_PROMPTS (config validation and the CLI read those keys).

# The default safety metric: share of harmful prompts the rule judge does NOT see refused.
SAFETY_METRIC = "refusal_asr"

# Where a task finds its data when `path` is not set: a hub dataset, else a file of the shared data folder
# (safeft/data/shared.py). A shared copy, when present, is used first: GSM8K test and SAMSum test are the
# same splits as the hub's, and evaluation then needs no network.
DEFAULT_PATHS = {
    "gsm8k": "openai/gsm8k",
    "answer-loss": "openai/gsm8k",  # GSM8K test answers, teacher-forced
    "samsum": "Samsung/samsum",
    "directharm4": "vfleaking/DirectHarm4",
    "gsm-danger": "vfleaking/GSM-Danger",
}
# Where a user gets a shared-data file that no hub name gives without an agreement (said by config check).
OBTAIN = {
    "hexphi": "HEx-PHI is gated: accept its terms at huggingface.co/datasets/LLM-Tuning-Safety/HEx-PHI, or use the "
              "copies in the LookAhead Tuning repository (zjunlp/LookAheadTuning, data/safety_bench/)",
}
OBTAIN["prefill"] = OBTAIN["hexphi"]
SHARED_FILES = {
    "gsm8k": ("gsm8k", "test.jsonl"),
    "answer-loss": ("gsm8k", "test.jsonl"),
    "samsum": ("samsum", "test.json"),
    "advbench": ("advbench", "harmful_behaviors.csv"),
    "hexphi": ("hexphi", "HEx-PHI.jsonl"),
    "prefill": ("hexphi", "Harmful-HEx-PHI.jsonl"),
    "xstest": ("xstest", "xstest_prompts.csv"),
}
