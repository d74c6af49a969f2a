"""Packing invariants, the varlen collator, the data-parallel sampler, and packed == unpacked forward.

Random cases come from seeded loops (hypothesis is not in the project's environment).
"""

from __future__ import annotations

import random

import pytest

from safeft.data.pack import (
    DistributedPackedSampler,
    PackedCollator,
    PackedRows,
    best_fit_decreasing,
    build_row,
    no_packing,
    pack,
    repair_bins,
    subset_sum_fill,
)
from safeft.data.tokenize import IGNORE_INDEX

PAD = 3


def random_examples(rng: random.Random, n: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """Examples whose first token is a unique id (>= 1000), so each can be found again in a row."""
    out = []
    for k in range(n):
        length = rng.randint(1, max_len)
        ids = [1000 + k] + [rng.randint(4, 999) for _ in range(length - 1)]
        n_prompt = rng.randint(0, length)
        out.append((ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:]))
    return out


def split_docs(row: dict) -> list[tuple[list[int], list[int], list[int]]]:
    """Cut a packed row at every position reset."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    return [
        (row["input_ids"][a:b], row["labels"][a:b], row["position_ids"][a:b]) for a, b in zip(starts, starts[1:])
    ]


def reference_bfd_fills(lengths: list[int], capacity: int) -> list[int]:
    """Best-fit-decreasing, the obvious O(n^2) way: the sorted fill levels of its bins."""
    fills: list[int] = []
    for n in sorted(lengths, reverse=True):
        fitting = [b for b, f in enumerate(fills) if f + n <= capacity]
        if fitting:
            best = max(fitting, key=lambda b: fills[b])
            fills[best] += n
        else:
            fills.append(n)
    return sorted(fills)


def next_fit_bins(lengths: list[int], capacity: int) -> int:
    """Naive packing: concatenate in order, start a new row when the next example does not fit."""
    bins, fill = 0, capacity
    for n in lengths:
        if fill + n > capacity:
            bins, fill = bins + 1, 0
        fill += n
    return bins


@pytest.mark.parametrize("seed", range(20))
def test_pack_uses_each_example_once_within_the_limit(seed):
    rng = random.Random(seed)
    cap = rng.choice([16, 64, 200])
    examples = random_examples(rng, rng.randint(1, 150), cap)
    rows = pack(examples, cap, seed=seed)
    seen = []
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) <= cap
        for ids, labels, positions in split_docs(row):
            ex_ids, ex_labels = examples[ids[0] - 1000]
            assert ids == ex_ids
            assert positions == list(range(len(ids)))  # positions restart for each document
            assert labels == [IGNORE_INDEX] + ex_labels[1:]  # never predict across a boundary
            seen.append(ids[0] - 1000)
    assert sorted(seen) == list(range(len(examples)))


@pytest.mark.parametrize("seed", range(30))
def test_best_fit_decreasing_matches_a_reference(seed):
    rng = random.Random(seed)
    cap = rng.choice([10, 100, 512])
    lengths = [rng.randint(1, cap) for _ in range(rng.randint(0, 300))]
    bins = best_fit_decreasing(lengths, cap, repair=False)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert sorted(sum(lengths[i] for i in b) for b in bins) == reference_bfd_fills(lengths, cap)


@pytest.mark.parametrize("seed", range(40))
def test_repair_never_adds_bins_and_keeps_items_within_capacity(seed):
    rng = random.Random(seed)
    cap = rng.choice([10, 64, 512, 2048])
    low = rng.choice([1, cap // 40 + 1, cap // 4])
    lengths = [rng.randint(low, max(low, rng.choice([cap // 3, cap // 2, cap]))) for _ in range(rng.randint(0, 400))]
    plain = best_fit_decreasing(lengths, cap, repair=False)
    for max_moves in (None, 0, 3):
        bins = repair_bins(plain, lengths, cap, max_moves=max_moves)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # each item exactly once
        assert all(b and sum(lengths[i] for i in b) <= cap for b in bins)
        assert -(-sum(lengths) // cap) <= len(bins) <= len(plain)
    default = best_fit_decreasing(lengths, cap)
    assert default == best_fit_decreasing(lengths, cap)  # deterministic
    assert sorted(i for b in default for i in b) == list(range(len(lengths)))
    assert all(b and sum(lengths[i] for i in b) <= cap for b in default)
    assert len(default) <= len(repair_bins(plain, lengths, cap))  # never worse than BFD + repair


@pytest.mark.parametrize("seed", range(40))
def test_subset_sum_fill_against_a_brute_force_subset_sum(seed):
    # Each bin is its longest remaining item plus the best subset of the rest: check the first bin's
    # fill against an exhaustive search over small inputs.
    from itertools import combinations

    rng = random.Random(seed)
    cap = rng.choice([10, 17, 32])
    lengths = [rng.randint(1, cap) for _ in range(rng.randint(1, 11))]
    bins = subset_sum_fill(lengths, cap)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= cap for b in bins)
    top = max(range(len(lengths)), key=lambda i: (lengths[i], -i))
    rest = [i for i in range(len(lengths)) if i != top]
    best = max(sum(lengths[i] for i in c) for k in range(len(rest) + 1) for c in combinations(rest, k)
               if sum(lengths[i] for i in c) <= cap - lengths[top])
    assert bins[0][0] == top and sum(lengths[i] for i in bins[0]) == lengths[top] + best


def test_repair_reaches_the_lower_bound_where_bfd_leaves_unusable_holes():
    # BFD: [4,4] [3,3,3] [3] - holes of 2 and 1 that no item fits; the repair finds [4,3,3] [4,3,3].
    lengths = [3, 3, 3, 4, 4, 3]
    assert len(best_fit_decreasing(lengths, 10, repair=False)) == 3
    bins = best_fit_decreasing(lengths, 10)
    assert sorted(sorted(lengths[i] for i in b) for b in bins) == [[3, 3, 4], [3, 3, 4]]
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))


def test_best_fit_decreasing_efficiency_vs_naive():
    rng = random.Random(0)
    cap = 2048
    # GSM8K-like lengths: mostly short, a long tail
    lengths = [min(cap, int(rng.lognormvariate(5.3, 0.5))) for _ in range(3000)]
    bfd = len(best_fit_decreasing(lengths, cap))
    lower_bound = -(-sum(lengths) // cap)
    efficiency = sum(lengths) / (bfd * cap)
    naive_efficiency = sum(lengths) / (next_fit_bins(lengths, cap) * cap)
    assert bfd <= lower_bound + 1  # near-optimal on many small items
    assert efficiency > 0.98 and efficiency > naive_efficiency + 0.03


def test_item_over_capacity_is_rejected():
    with pytest.raises(ValueError, match="length 9 > capacity 8"):
        best_fit_decreasing([3, 9], 8)


def test_pack_order_depends_on_the_seed_only():
    examples = random_examples(random.Random(1), 60, 32)
    assert pack(examples, 64, seed=5) == pack(examples, 64, seed=5)
    assert pack(examples, 64, seed=5) != pack(examples, 64, seed=6)


def test_no_packing_is_one_document_per_row():
    examples = random_examples(random.Random(2), 20, 10)
    rows = no_packing(examples, seed=0)
    assert sorted(r["input_ids"][0] for r in rows) == [1000 + k for k in range(20)]
    assert all(len(split_docs(r)) == 1 for r in rows)


# --- collator -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_collator_cu_seq_lens_match_positions(seed):
    rng = random.Random(seed)
    rows = pack(random_examples(rng, 40, 30), 64, seed=seed)[: rng.randint(1, 4)]
    rows = rows + [None] * rng.randint(0, 2)
    batch = PackedCollator(PAD)(rows)
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    total = sum(len(r["input_ids"]) for r in rows if r) + sum(1 for r in rows if r is None)
    assert ids.shape == labels.shape == pos.shape == (1, total)
    cu = batch["cu_seq_lens_q"].tolist()
    assert str(batch["cu_seq_lens_q"].dtype) == "torch.int32"  # what varlen attention kernels take
    assert batch["cu_seq_lens_k"].tolist() == cu and cu[0] == 0 and cu[-1] == total
    n_docs = sum(len(split_docs(r)) for r in rows if r) + rows.count(None)
    assert len(cu) == n_docs + 1
    for a, b in zip(cu, cu[1:]):
        assert pos[0, a:b].tolist() == list(range(b - a))
        assert labels[0, a].item() == IGNORE_INDEX
    assert batch["max_length_q"] == batch["max_length_k"] == max(b - a for a, b in zip(cu, cu[1:]))
    if rows[-1] is None:
        assert ids[0, cu[-2]:].tolist() == [PAD] and labels[0, -1].item() == IGNORE_INDEX


def test_collator_all_padding_contributes_no_loss():
    batch = PackedCollator(PAD)([None, None])
    assert batch["input_ids"].tolist() == [[PAD, PAD]]
    assert (batch["labels"] == IGNORE_INDEX).all()


def test_packed_rows_padding_slot_is_none():
    rows = PackedRows([{"input_ids": [1]}, {"input_ids": [2]}])
    assert len(rows) == 2 and rows[1] == {"input_ids": [2]} and rows[-1] is None


# --- distributed sampler --------------------------------------------------------------------------


def schedules(tokens, world, micro, accum, seed, epoch=0, start_step=0):
    out = []
    for rank in range(world):
        s = DistributedPackedSampler(tokens, world, rank, micro, accum, seed)
        s.set_epoch(epoch, start_step)
        batches = list(s)
        assert len(batches) == len(s)
        out.append(batches)
    return out


CASES = [(n, world, micro, accum) for n in (1, 7, 64, 101) for world, micro, accum in
         [(1, 1, 1), (2, 1, 1), (1, 1, 2), (2, 2, 3), (4, 1, 2), (3, 2, 1)]]


@pytest.mark.parametrize("n,world,micro,accum", CASES)
def test_sampler_uses_every_row_once_per_epoch(n, world, micro, accum):
    tokens = [random.Random(n).randint(1, 500) for _ in range(n)]
    for epoch in (0, 1):
        sched = schedules(tokens, world, micro, accum, seed=3, epoch=epoch)
        lengths = {len(b) for b in sched}
        assert len(lengths) == 1  # same number of micro-batches on every rank
        assert all(len(mb) == micro for batches in sched for mb in batches)
        used = [i for batches in sched for mb in batches for i in mb if i >= 0]
        assert sorted(used) == list(range(n))
        pads = sum(1 for batches in sched for mb in batches for i in mb if i < 0)
        assert pads < world * micro * accum  # padding only fills the last optimizer step


def test_sampler_epochs_reshuffle():
    tokens = list(range(1, 41))
    assert schedules(tokens, 2, 1, 1, seed=0, epoch=0) != schedules(tokens, 2, 1, 1, seed=0, epoch=1)


@pytest.mark.parametrize("start_step", [0, 1, 5, 12, 13])
def test_resume_gives_the_suffix_of_the_schedule(start_step):
    tokens = [random.Random(9).randint(1, 300) for _ in range(101)]
    world, micro, accum = 2, 2, 2
    full = schedules(tokens, world, micro, accum, seed=1, epoch=2)
    resumed = schedules(tokens, world, micro, accum, seed=1, epoch=2, start_step=start_step)
    for rank in range(world):
        assert resumed[rank] == full[rank][start_step * accum:]


def test_two_ranks_and_two_accumulation_steps_consume_the_same_rows_per_step():
    tokens = [random.Random(4).randint(1, 300) for _ in range(37)]
    for micro in (1, 3):
        (r0, r1) = schedules(tokens, 2, micro, 1, seed=7)
        (single,) = schedules(tokens, 1, micro, 2, seed=7)
        assert len(r0) == len(r1) == len(single) // 2
        for step in range(len(r0)):
            assert sorted(r0[step] + r1[step]) == sorted(single[2 * step] + single[2 * step + 1])


def test_tokens_are_balanced_across_ranks():
    rng = random.Random(11)
    tokens = [rng.randint(1, 2048) for _ in range(800)]
    world, micro, accum = 4, 2, 2
    sched = schedules(tokens, world, micro, accum, seed=0)

    def load(batches, step):
        return sum(tokens[i] for mb in batches[step * accum:(step + 1) * accum] for i in mb if i >= 0)

    steps = len(sched[0]) // accum
    spread = 0
    for step in range(steps):
        loads = [load(b, step) for b in sched]
        block = [i for b in sched for mb in b[step * accum:(step + 1) * accum] for i in mb if i >= 0]
        assert max(loads) - min(loads) <= max(tokens[i] for i in block)  # snake dealing bound
        spread += max(loads) - min(loads)
    # naive dealing of the same shuffled order (row j of a step to rank j % world) is far less even
    order = list(range(len(tokens)))
    random.Random(0).shuffle(order)
    per_step = world * micro * accum
    naive = 0
    for step in range(steps):
        block = order[step * per_step:(step + 1) * per_step]
        loads = [sum(tokens[i] for i in block[r::world]) for r in range(world)]
        naive += max(loads) - min(loads)
    assert spread < 0.5 * naive


def test_bad_rank_is_rejected():
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        DistributedPackedSampler([1, 2], 2, 2, 1, 1, 0)


# --- packed forward == unpacked forward -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    from safeft.tiny import tiny_llama

    return tiny_llama(256, seed=0)


@pytest.fixture(scope="module")
def packed_docs():
    rng = random.Random(0)
    docs = []
    for n in (9, 17, 4, 23):
        ids = [rng.randint(4, 255) for _ in range(n)]
        n_prompt = rng.randint(1, n - 1)
        docs.append((ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:]))
    rows = [build_row(docs[:2]), build_row(docs[2:])]
    return docs, PackedCollator(PAD)(rows)


def _separate_logits(model, docs):
    import torch

    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids, _ in docs])


def test_packed_forward_equals_unpacked(tiny_model, packed_docs):
    import torch

    docs, batch = packed_docs
    with torch.no_grad():
        packed = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                            attention_mask=None, use_cache=False).logits[0]  # [T, V]
    separate = _separate_logits(tiny_model, docs)  # [T, V]
    assert packed.shape == separate.shape
    assert (packed - separate).abs().max().item() < 1e-5


@pytest.mark.parametrize("trap", ["use_cache", "all_ones_mask"])
def test_packed_forward_trap_attends_across_documents(tiny_model, packed_docs, trap):
    """Found with transformers 5.23: either trap makes attention cross document boundaries."""
    import torch

    docs, batch = packed_docs
    kwargs = {"use_cache": True, "attention_mask": None} if trap == "use_cache" else {
        "use_cache": False, "attention_mask": torch.ones_like(batch["input_ids"])}
    with torch.no_grad():
        packed = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **kwargs).logits[0]
    diff = (packed - _separate_logits(tiny_model, docs)).abs()  # [T, V]
    first = len(docs[0][0])
    assert diff[:first].max().item() < 1e-5  # the first document has nothing before it to leak from
    assert diff.max().item() > 1e-2


def test_packed_loss_is_the_token_weighted_loss_of_the_documents(tiny_model, packed_docs):
    import torch
    import torch.nn.functional as F

    docs, batch = packed_docs
    with torch.no_grad():
        out = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                         attention_mask=None, use_cache=False)
        total, count = 0.0, 0
        for ids, labels in docs:
            logits = tiny_model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]  # [n, V]
            target = torch.tensor(labels[1:])  # [n-1]
            total += F.cross_entropy(logits[:-1], target, ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((target != IGNORE_INDEX).sum())
    assert count > 0
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5, abs=1e-6)
