"""The toy demo's aligned base model: data splits, cache key, and a few steps of the real recipe."""

import copy
import json
import os

import pytest

from safeft.demo import alignment as S
from safeft.demo import toy_base as B


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


def test_cache_key_follows_the_recipe():
    other = copy.deepcopy(B.RECIPE)
    other["stages"][0][1] += 1
    assert B.recipe_key() == B.recipe_key(copy.deepcopy(B.RECIPE)) != B.recipe_key(other)


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
