"""The demo's aligned base model: data splits, cache key, and a few steps of the real recipe."""

import copy
import json
import os

import pytest

from safeft import demo_base as B
from safeft.data import synthetic as S


def test_heldout_harmful_prompts_are_never_trained_on():
    assert not set(S.HARMFUL_TOPICS_TRAIN) & set(S.HARMFUL_TOPICS_HELDOUT)
    assert not set(S.HARMFUL_PHRASINGS_TRAIN) & set(S.HARMFUL_PHRASINGS_HELDOUT)
    held = set(S.harmful_heldout())
    trained = {r["question"] for k in range(len(B.RECIPE["stages"])) for r in
               B.stage_examples(2000, 0.3, 0.15, seed=B.RECIPE["seed"] + 100 * k)}
    assert len(held) == len(S.HARMFUL_TOPICS_HELDOUT) * 12 and not held & trained
    for topic in S.HARMFUL_TOPICS_HELDOUT:  # no held-out topic leaks into any training question
        assert not any(topic in q for q in trained)


def test_heldout_arithmetic_is_removed_from_training_sets():
    held = {p["question"] for p in B.heldout_arithmetic(200)}
    train = {p["question"] for p in B.task_problems(3000, seed=2024)}
    align = {r["question"] for r in B.stage_examples(3000, 0.3, 0.15, seed=B.RECIPE["seed"])}
    assert len(held) > 150 and not held & train and not held & align


def test_refusals_and_prefill_openings_are_what_the_judges_read():
    from safeft.eval.judges import GCG_KEYWORDS, refuses
    from safeft.eval.refusal import refusal_judge

    assert all(refuses(r, GCG_KEYWORDS) for r in S.REFUSALS)
    assert not any(refuses(c, GCG_KEYWORDS) for c in S.COMPLIANT_STARTS)
    _, items, _ = refusal_judge(list(S.REFUSALS) + list(S.COMPLIANT_STARTS))
    assert [it["refusal"] for it in items] == [True] * len(S.REFUSALS) + [False] * len(S.COMPLIANT_STARTS)
    rows = S.prefill_rows(["How do I x?"])
    assert rows[0]["messages"][1]["content"] in S.COMPLIANT_STARTS


def test_cache_key_follows_the_recipe():
    other = copy.deepcopy(B.RECIPE)
    other["stages"][0][1] += 1
    assert B.recipe_key() == B.recipe_key(copy.deepcopy(B.RECIPE)) != B.recipe_key(other)


def test_cache_key_follows_the_code_that_trains_the_base(tmp_path, monkeypatch):
    assert {"safeft/train/loop.py", "safeft/data/synthetic.py", "safeft/model.py"} <= set(B.BASE_SOURCES)
    trainer = tmp_path / "loop.py"  # an absolute path stands in for one of the sources
    trainer.write_text("x = 1\n")
    monkeypatch.setattr(B, "BASE_SOURCES", B.BASE_SOURCES + (str(trainer),))
    before = B.recipe_key()
    trainer.write_text("x = 2\n")
    assert B.recipe_key() != before


@pytest.mark.slow
def test_a_few_steps_of_the_recipe_build_a_cached_model(tmp_path):
    """The real path (tokenizer, init, safeft.train.run per stage, atomic cache) on a shrunken recipe."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = B.quick_recipe()
    said = []
    path = B.build_base(str(tmp_path), recipe, say=said.append)
    assert os.path.basename(path) == B.recipe_key(recipe)
    assert len([s for s in said if s.startswith("base stage")]) == len(recipe["stages"])
    curves = [json.loads(line) for line in open(os.path.join(path, "base_curves.jsonl"))]
    assert [c["template"] for c in curves] == [s[0] for s in recipe["stages"]]
    assert all(len(c["losses"]) == s[1] for c, s in zip(curves, recipe["stages"]))
    assert not os.path.exists(os.path.join(path, "safeft_run.json"))  # not a fine-tuning run
    tok = AutoTokenizer.from_pretrained(path)
    AutoModelForCausalLM.from_pretrained(path)
    from safeft.templates import LLAMA_SYS

    assert len(tok(LLAMA_SYS, add_special_tokens=False)["input_ids"]) == 1  # the system prompt is one token
    mtime = os.path.getmtime(os.path.join(path, "config.json"))
    said.clear()
    assert B.build_base(str(tmp_path), recipe, say=said.append) == path  # cached: no stage runs
    assert not any(s.startswith("base stage") for s in said)
    assert os.path.getmtime(os.path.join(path, "config.json")) == mtime
