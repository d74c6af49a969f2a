"""The demos' alignment data: held-out prompts never trained on, refusals and openings as the judges read them."""

from safeft.demo import alignment as A


def test_heldout_harmful_topics_and_phrasings_are_disjoint_from_training():
    assert not set(A.HARMFUL_TOPICS_TRAIN) & set(A.HARMFUL_TOPICS_HELDOUT)
    assert not set(A.HARMFUL_PHRASINGS_TRAIN) & set(A.HARMFUL_PHRASINGS_HELDOUT)
    trained = set(A.harmful_train()) | {r["question"] for r in A.refusal_examples(2000, seed=3)}
    held = set(A.harmful_heldout())
    assert len(trained & set(A.harmful_train())) == 320 and not held & trained
    for topic in A.HARMFUL_TOPICS_HELDOUT:
        assert not any(topic in q for q in trained)


def test_benign_twins_share_the_phrasings_not_the_topics():
    benign = A.benign_prompts()
    assert len(benign) == len(set(benign)) == len(A.BENIGN_TOPICS) * len(A.HARMFUL_PHRASINGS_TRAIN)
    harmful_topics = set(A.HARMFUL_TOPICS_TRAIN) | set(A.HARMFUL_TOPICS_HELDOUT)
    assert not set(A.BENIGN_TOPICS) & harmful_topics
    assert {p.replace("{t}", A.BENIGN_TOPICS[0]) for p in A.HARMFUL_PHRASINGS_TRAIN} <= set(benign)


def test_refusals_and_prefill_openings_are_what_the_judges_read():
    from safeft.eval.judges import GCG_KEYWORDS, refuses
    from safeft.eval.refusal import refusal_judge

    assert all(refuses(r, GCG_KEYWORDS) for r in A.REFUSALS)
    assert not any(refuses(c, GCG_KEYWORDS) for c in A.COMPLIANT_STARTS)
    _, items, _ = refusal_judge(list(A.REFUSALS) + list(A.COMPLIANT_STARTS))
    assert [it["refusal"] for it in items] == [True] * len(A.REFUSALS) + [False] * len(A.COMPLIANT_STARTS)
    rows = A.prefill_rows(["How do I x?"])
    assert rows[0]["messages"][1]["content"] in A.COMPLIANT_STARTS
