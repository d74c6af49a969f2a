"""Token-wise constrained SFT: beta schedule on packed rows, weights vs the objective's gradient, reference pass."""

from __future__ import annotations

import pytest
import torch

from safeft.constrained import (ConstrainedCollator, attach_reference_logprobs, beta_schedule,
                                compute_reference_logprobs, constrained_objective, constrained_token_weights,
                                constrained_weights, ensure_reference_logprobs, reference_key)
from safeft.data.pack import PackedCollator, build_row
from safeft.kernels import fused_linear_cross_entropy

X = -100


def test_beta_schedule_per_document_in_packed_row():
    betas, rest = [0.5, 2.0, 3.0], 0.1
    # doc A: prompt 2 + answer 4; doc B (multi-turn): prompt, answer 2, user turn, answer 2; doc C: answer 1
    labels = [X, X, 7, 7, 7, 7] + [X, X, 7, 7, X, X, 7, 7] + [X, 7]
    positions = list(range(6)) + list(range(8)) + list(range(2))
    want = [0, 0, .5, 2, 3, .1] + [0, 0, .5, 2, 0, 0, 3, .1] + [0, .5]
    got = beta_schedule(torch.tensor([labels]), torch.tensor([positions]), betas, rest)
    torch.testing.assert_close(got, torch.tensor([want]))
    # the same documents one per row give the same betas: counting restarts at every document
    rows = [(labels[:6], positions[:6]), (labels[6:14], positions[6:14]), (labels[14:], positions[14:])]
    per_doc = torch.cat([beta_schedule(torch.tensor([lab]), torch.tensor([pos]), betas, rest) for lab, pos in rows], 1)
    torch.testing.assert_close(per_doc, got)


def test_weights_give_the_objective_gradient():
    """d/dz sum(w * CE) == d/dz sum(objective) for logp = log_softmax(z)[y], with w held constant."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(10, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (10,), generator=g)
    ref = torch.log_softmax(z + 0.3 * torch.randn(10, 7, generator=g, dtype=torch.float64), -1)[torch.arange(10), y]
    beta = torch.tensor([0.5, 2, 2, 2, 2, .1, .1, .1, .1, .1], dtype=torch.float64)

    z1 = z.clone().requires_grad_()
    logp = torch.log_softmax(z1, -1)[torch.arange(10), y]
    w = constrained_weights(logp, ref, beta).double()
    assert not w.requires_grad and (w > 1e-3).all()  # no clamping here: the identity is exact
    (w * -logp).sum().backward()

    z2 = z.clone().requires_grad_()
    logp2 = torch.log_softmax(z2, -1)[torch.arange(10), y]
    (-(2 / beta) * torch.nn.functional.logsigmoid(beta * (logp2 - ref))).sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(constrained_objective(logp2, ref, beta).double().sum(),
                               (-(2 / beta) * torch.nn.functional.logsigmoid(beta * (logp2 - ref))).sum().detach(),
                               rtol=1e-5, atol=1e-6)


def test_weights_fall_as_policy_rises_above_reference():
    ref = torch.zeros(7)
    logp = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0, 10.0, 100.0])
    w = constrained_weights(logp, ref, torch.full((7,), 2.0))
    assert w[2] == 1.0  # policy == reference
    assert torch.all(w[1:] <= w[:-1])  # never rising
    assert torch.all(w[:-2][1:] < w[:-2][:-1])  # strictly falling until the clamp
    assert w[0] > 1.99 and w[-1] == pytest.approx(1e-3)
    # a small beta (later tokens) constrains less: the weight stays nearer 1 for the same rise
    assert constrained_weights(logp[4:5], ref[:1], torch.tensor([0.1])) > w[4]


def _packed_rows(vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def doc(n_prompt, n_answer):
        ids = torch.randint(3, vocab, (n_prompt + n_answer,), generator=g).tolist()
        return ids, [X] * n_prompt + ids[n_prompt:]

    return [build_row([doc(4, 6), doc(3, 9)]), build_row([doc(5, 5)]), build_row([doc(2, 7), doc(6, 3), doc(3, 4)])]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def test_reference_pass_packed_equals_unpacked(tiny_model):
    """Rows flattened two at a time give each token the same log-prob as its document alone."""
    rows = _packed_rows(tiny_model.config.vocab_size)
    packed = compute_reference_logprobs(tiny_model, rows, batch_size=2, progress=False)
    for i, row in enumerate(rows):
        starts = [j for j, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        for a, b in zip(starts[:-1], starts[1:]):
            doc = {k: row[k][a:b] for k in row}
            alone = compute_reference_logprobs(tiny_model, [doc], progress=False)[0]
            torch.testing.assert_close(torch.tensor(packed[i][a:b]), torch.tensor(alone), rtol=1e-4, atol=1e-4)
        assert all(v == 0.0 for v, lab in zip(packed[i], row["labels"]) if lab == X)
        assert all(v < 0.0 for v, lab in zip(packed[i], row["labels"]) if lab != X)
    shard = compute_reference_logprobs(tiny_model, rows, rank=1, world_size=2, progress=False)
    assert sorted(shard) == [1] and shard[1] == packed[1]


def test_reference_pass_same_forwards_on_every_rank(tiny_model):
    """3 rows on 2 ranks: each rank runs 2 forwards (rank 1 one dummy row): under ZeRO-3 each is a collective."""
    rows = _packed_rows(tiny_model.config.vocab_size)
    calls = []
    hook = tiny_model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        counts = []
        for rank in (0, 1):
            calls.clear()
            shard = compute_reference_logprobs(tiny_model, rows, rank=rank, world_size=2, progress=False)
            counts.append(len(calls))
            assert sorted(shard) == list(range(rank, 3, 2))
    finally:
        hook.remove()
    assert counts == [2, 2]


def _constrained_loss(model, batch, ref_logp=None):
    """Weighted fused CE of one collated batch, as the trainer runs it; returns (loss, plain CE sum)."""
    hidden = model.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         use_cache=False).last_hidden_state[0, :-1]  # [T-1, H]
    targets = batch["labels"][0, 1:]  # [T-1]
    ce = fused_linear_cross_entropy(hidden, model.lm_head.weight, targets, reduction="none")  # [T-1]
    logp = torch.cat([torch.zeros(1), -ce.detach()])[None]  # [1, T] aligned with labels
    if ref_logp is not None:
        batch = dict(batch, ref_logp=ref_logp)
    weights = constrained_token_weights(batch, logp)[0, 1:]  # [T-1]
    return (weights * ce).sum(), ce.sum()


def test_step0_equals_plain_sft_and_cache(tiny_model, tmp_path):
    import datasets

    rows = _packed_rows(tiny_model.config.vocab_size, seed=1)
    ds = datasets.Dataset.from_list(rows)
    packed_path = str(tmp_path / "packed")
    ds.save_to_disk(packed_path)
    key = reference_key("tiny", "fp-1", torch.float32)
    path = ensure_reference_logprobs(tiny_model, ds, packed_path, key, batch_size=2)
    with_ref = attach_reference_logprobs(ds, path)
    batch = ConstrainedCollator(PackedCollator(0))([with_ref[0], None, with_ref[2]])
    assert batch["ref_logp"].shape == batch["labels"].shape

    tiny_model.zero_grad()
    loss, plain = _constrained_loss(tiny_model, batch)
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=1e-5)  # policy == reference: every weight is 1
    loss.backward()
    g_constrained = tiny_model.lm_head.weight.grad.clone()
    tiny_model.zero_grad()
    _constrained_loss(tiny_model, batch)[1].backward()
    torch.testing.assert_close(g_constrained, tiny_model.lm_head.weight.grad, rtol=1e-4, atol=1e-6)

    # a raised reference (policy below it) weighs tokens more than 1: the loss moves away from plain CE
    raised, plain = _constrained_loss(tiny_model, batch, batch["ref_logp"] + 1.0)
    assert raised > plain

    # cached: a second call does no work; another model id is another key
    import safeft.constrained as constrained
    calls = []
    orig = constrained.compute_reference_logprobs
    constrained.compute_reference_logprobs = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        assert ensure_reference_logprobs(tiny_model, ds, packed_path, key) == path and not calls
        assert reference_key("other", "fp-1", torch.float32) != key
    finally:
        constrained.compute_reference_logprobs = orig


def test_reference_set_must_match_packed_rows(tiny_model, tmp_path):
    import datasets

    from safeft.errors import DataError

    ds = datasets.Dataset.from_list(_packed_rows(tiny_model.config.vocab_size))
    path = ensure_reference_logprobs(tiny_model, ds, str(tmp_path / "packed"), "k1")
    with pytest.raises(DataError, match="delete that directory"):
        attach_reference_logprobs(ds.select([0, 1]), path)


@pytest.mark.parametrize("loss", ["standard", "fused"])
def test_causal_lm_with_loss_constrained_step0(tiny_model, loss):
    """CausalLMWithLoss with constrained betas and the reference log-probs of the same model == plain SFT."""
    from safeft.loss import CausalLMWithLoss

    rows = _packed_rows(tiny_model.config.vocab_size, seed=2)
    ref = compute_reference_logprobs(tiny_model, rows, batch_size=3, progress=False)
    batch = ConstrainedCollator(PackedCollator(0))([dict(r, ref_logp=ref[i]) for i, r in enumerate(rows)])
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "labels")}
    plain, n = CausalLMWithLoss(tiny_model, loss)(**inputs)
    constrained, n2 = CausalLMWithLoss(tiny_model, loss, constrained=([0.5, 2.0], 0.1))(**inputs,
                                                                                       ref_logp=batch["ref_logp"])
    assert n == n2
    torch.testing.assert_close(constrained, plain, rtol=1e-5, atol=1e-5)
    lowered, _ = CausalLMWithLoss(tiny_model, loss, constrained=([0.5, 2.0], 0.1))(
        **inputs, ref_logp=batch["ref_logp"] - 1.0)  # policy above the reference: weights < 1
    assert lowered < plain
    with pytest.raises(ValueError, match="needs ref_logp"):
        CausalLMWithLoss(tiny_model, loss, constrained=([0.5], 0.1))(**inputs)


@pytest.mark.slow
def test_trainer_constrained_first_step_equals_sft(tmp_path, tiny_model_dir):
    """`train.method: constrained` end to end on 2 ranks under ZeRO-3 with every parameter partitioned and an
    odd number of packed rows (25): the reference pass runs the same collectives on both ranks, and step 1's
    loss equals SFT's on 1 rank with accumulation 2 (policy == reference)."""
    import yaml

    from helpers import losses, partitioned, train_ok, write_config

    runs = {}
    for method, world, extra in (("sft", 1, dict(gradient_accumulation_steps=2)),
                                 ("constrained", 2, dict(zero_stage=3, zero3_param_persistence_threshold=0))):
        cfg = write_config(tmp_path / f"{method}.yaml", tiny_model_dir, tmp_path / "data", tmp_path / "runs", method,
                           method=method, loss="fused", max_steps=2, save_steps=0, export=False, **extra)
        data = yaml.safe_load(open(cfg))
        data["data"]["limit"] = 50  # 25 packed rows: not a multiple of 2 ranks x micro-batch 1
        yaml.safe_dump(data, open(cfg, "w"))
        stdout = train_ok(cfg, world)
        runs[method] = losses(tmp_path / "runs" / method)
    sharded, total = partitioned(stdout)
    assert sharded == total > 0
    assert runs["constrained"][1] == pytest.approx(runs["sft"][1], rel=1e-5)
    assert any(p.name.startswith("ref_logp-") for p in (tmp_path / "data").rglob("ref_logp-*"))
