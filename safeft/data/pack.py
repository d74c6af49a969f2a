"""Packing: best-fit-decreasing over the whole dataset, the varlen collator, and the data-parallel sampler.

A packed row holds several documents back to back, `position_ids` restarting at 0 for each. The
collator flattens a micro-batch of rows into one sequence [1, T] and derives `cu_seq_lens_q/k` and
`max_length_q/k` once per batch, so varlen attention never syncs the host to find boundaries.
Labels at every document's first token are -100: no token is trained to predict across a boundary.
"""

from __future__ import annotations

import bisect
import random
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from safeft.data.tokenize import IGNORE_INDEX


def best_fit_decreasing(lengths: Sequence[int], capacity: int, repair: bool = True) -> list[list[int]]:
    """Bins of item indices, each bin's total length <= capacity, as few as the heuristics find.

    `repair=False` is plain best-fit-decreasing: items go in decreasing length into the bin whose
    free space is smallest but still enough (a bisect over sorted free-space values, O(n log capacity)).
    The default packs twice and keeps the fewer bins (the subset-sum fill on ties): `subset_sum_fill`,
    which reaches ceil(total / capacity) on GSM8K and SAMSum under real tokenizers where BFD leaves
    about 1% of every row as holes no item fits, and BFD followed by `repair_bins`, whose result is
    kept when it is strictly better (a guard for adversarial length mixes). Both are deterministic.
    """
    if not repair:
        return _plain_best_fit_decreasing(lengths, capacity)
    filled = repair_bins(subset_sum_fill(lengths, capacity), lengths, capacity)
    if len(filled) <= -(-sum(lengths) // capacity):
        return filled
    repaired = repair_bins(_plain_best_fit_decreasing(lengths, capacity), lengths, capacity)
    return repaired if len(repaired) < len(filled) else filled


def subset_sum_fill(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Open bins longest item first and complete each with the subset of the remaining items that
    fills it best (exactly, whenever one exists), larger items preferred.

    The subset sum runs over distinct lengths with their counts (binary-split bundles), as Python
    big-int bitsets of capacity + 1 bits, and stops at the first exact fill; items of one length are
    taken lowest index first. Many short documents per row (GSM8K at 2048: ~10) leave so many
    combinations that almost every bin closes with no hole at all.
    """
    by_len: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], -i)):
        if lengths[i] > capacity:
            raise ValueError(f"item {i} has length {lengths[i]} > capacity {capacity}")
        by_len.setdefault(lengths[i], []).append(i)  # a stack per length: pop() gives the lowest index
    counts = {n: len(items) for n, items in by_len.items()}
    bins: list[list[int]] = []
    for top in sorted(counts, reverse=True):
        while counts[top]:
            counts[top] -= 1
            b = [by_len[top].pop()]
            for n in _best_subset(counts, capacity - top):
                counts[n] -= 1
                b.append(by_len[n].pop())
            bins.append(b)
    return bins


def _best_subset(counts: dict[int, int], room: int) -> list[int]:
    """A multiset of lengths drawn from `counts` with the largest sum <= room (larger lengths first)."""
    mask = (1 << (room + 1)) - 1
    reach, steps = 1, []  # bit s of reach: sum s is reachable; steps: (reach before, length, copies)
    for n in sorted((n for n, c in counts.items() if c and 0 < n <= room), reverse=True):
        left, k = min(counts[n], room // n), 1
        while left > 0:  # bundles of 1, 2, 4, ... copies express every count up to `left`
            take = min(k, left)
            steps.append((reach, n, take))
            reach = (reach | (reach << (take * n))) & mask
            left -= take
            k *= 2
        if reach >> room & 1:
            break
    s = reach.bit_length() - 1
    out: list[int] = []
    for before, n, take in reversed(steps):  # s unreachable before a bundle -> that bundle is in the sum
        if not before >> s & 1:
            s -= take * n
            out += [n] * take
    return out


def _plain_best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    spaces: list[int] = []  # sorted distinct free-space values
    bins_with_space: dict[int, list[int]] = {}  # free space -> stack of bin ids
    bins: list[list[int]] = []
    fill: list[int] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item {i} has length {n} > capacity {capacity}")
        k = bisect.bisect_left(spaces, n)
        if k < len(spaces):
            space = spaces[k]
            stack = bins_with_space[space]
            b = stack.pop()
            if not stack:
                del bins_with_space[space]
                spaces.pop(k)
        else:
            b = len(bins)
            bins.append([])
            fill.append(0)
        bins[b].append(i)
        fill[b] += n
        left = capacity - fill[b]
        if left > 0:
            if left not in bins_with_space:
                bisect.insort(spaces, left)
                bins_with_space[left] = []
            bins_with_space[left].append(b)
    return bins


def repair_bins(bins: Sequence[Sequence[int]], lengths: Sequence[int], capacity: int,
                max_moves: Optional[int] = None) -> list[list[int]]:
    """Empty the least-filled bins into the others' free space; deterministic, bounded.

    BFD leaves many small holes (each below the shortest item) that no item fits. Repeatedly take
    the least-filled bin E and move its items (longest first) elsewhere: an item goes into the bin
    with the smallest free space that still holds it; when none does, the bin D with the most free
    space grows its hole by exchanges with other bins - D gives an item b and takes a shorter item a
    from a bin A with room for b - a (the largest such gain first) - which merges A's small hole into
    D's. If E cannot be emptied within the move budget, everything done for E is undone and the
    repair stops; it also stops at the lower bound ceil(total / capacity). Each exchange costs
    O(|D| * n) vectorised work; at most `max_moves` (default n + 100) exchanges run in total.
    Returns bins in their original order, the emptied ones dropped: never more bins than given,
    each item exactly once, no bin over capacity.
    """
    n = len(lengths)
    out = [list(b) for b in bins]
    if len(out) < 2:
        return out
    size = np.asarray(lengths, dtype=np.int64)  # [n]
    item_bin = np.empty(n, dtype=np.int64)  # [n] bin of each item
    for b, items in enumerate(out):
        item_bin[items] = b
    fill = np.array([int(size[b].sum()) for b in out], dtype=np.int64)  # [bins]
    alive = np.ones(len(out), dtype=bool)  # [bins]
    lower = -(-int(size.sum()) // capacity)
    budget = n + 100 if max_moves is None else max_moves
    while int(alive.sum()) > lower:
        live = np.flatnonzero(alive)
        e = int(live[np.argmin(fill[live])])  # least filled, lowest index on ties
        snapshot = (item_bin.copy(), fill.copy(), [list(m) for m in out], budget)
        ok = True
        for x in sorted(out[e], key=lambda i: (-lengths[i], i)):
            while True:
                free = capacity - fill  # [bins]
                free[~alive] = -1
                free[e] = -1
                fits = np.flatnonzero(free >= size[x])
                if fits.size:  # best fit
                    d = int(fits[np.argmin(free[fits])])
                    break
                d = int(np.argmax(free))  # grow the largest hole
                if budget <= 0:
                    ok = False
                    break
                room = free[item_bin]  # [n] free space of each item's bin; -1 for items of D and E
                room[out[d]] = -1
                best = None
                for b in out[d]:
                    gain = size[b] - size  # [n]
                    cand = np.flatnonzero((gain > 0) & (gain <= room))
                    if cand.size:
                        k = int(cand[np.argmax(gain[cand])])
                        if best is None or gain[k] > best[0]:
                            best = (int(gain[k]), b, k)
                if best is None:
                    ok = False
                    break
                budget -= 1
                g, b, a = best
                src = int(item_bin[a])
                out[d].remove(b)
                out[d].append(a)
                out[src].remove(a)
                out[src].append(b)
                item_bin[a], item_bin[b] = d, src
                fill[d] -= g
                fill[src] += g
            if not ok:
                break
            out[e].remove(x)
            out[d].append(x)
            item_bin[x] = d
            fill[e] -= size[x]
            fill[d] += size[x]
        if not ok:
            item_bin, fill, out, budget = snapshot
            break
        alive[e] = False
    return [out[b] for b in range(len(out)) if alive[b]]


def build_row(docs: Sequence[tuple[list[int], list[int]]]) -> dict[str, list[int]]:
    """Concatenate (input_ids, labels) documents into one packed row with restarting positions."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for ids, labs in docs:
        input_ids.extend(ids)
        labels.append(IGNORE_INDEX)  # the first token of a document is never a target
        labels.extend(labs[1:])
        position_ids.extend(range(len(ids)))
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def pack(examples: Sequence[tuple[list[int], list[int]]], max_seq_len: int, seed: int) -> list[dict]:
    """Pack (input_ids, labels) examples into rows of at most max_seq_len tokens, in a seeded order."""
    bins = best_fit_decreasing([len(ids) for ids, _ in examples], max_seq_len)
    rng = random.Random(seed)
    rng.shuffle(bins)
    return [build_row([examples[i] for i in sorted(b)]) for b in bins]


def no_packing(examples: Sequence[tuple[list[int], list[int]]], seed: int) -> list[dict]:
    """One document per row (data.packing: false), in a seeded order."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [build_row([examples[i]]) for i in order]


class PackedCollator:
    """Flatten a micro-batch of packed rows into one [1, T] sequence with varlen attention metadata.

    Output: input_ids, labels, position_ids [1, T] int64; cu_seq_lens_q/k [docs+1] int32;
    max_length_q/k int. A padding slot (row None) becomes one pad token with label -100, so a rank
    without a real row still runs a forward and contributes nothing to the loss.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        import torch

        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for row in rows:
            if row is None:
                row = {"input_ids": [self.pad_token_id], "labels": [IGNORE_INDEX], "position_ids": [0]}
            input_ids.extend(row["input_ids"])
            labels.extend(row["labels"])
            position_ids.extend(row["position_ids"])
        pos = torch.tensor(position_ids, dtype=torch.long)
        starts = torch.nonzero(pos == 0).flatten()
        cu = torch.cat([starts, torch.tensor([len(position_ids)])]).to(torch.int32)
        max_len = int((cu[1:] - cu[:-1]).max())
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long)[None],
            "labels": torch.tensor(labels, dtype=torch.long)[None],
            "position_ids": pos[None],
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": max_len,
            "max_length_k": max_len,
        }


class DistributedPackedSampler:
    """Yields this rank's micro-batches (lists of row indices, -1 = padding slot) for one epoch.

    Rows are shuffled per epoch with `seed + epoch`, then cut into optimizer-step blocks of
    world_size x micro_batch x accumulation rows. Inside a block rows are dealt to ranks longest
    first in snake order, which balances tokens; the last block is padded with -1 so every rank runs
    the same number of micro-steps. Every row is used exactly once per epoch. The schedule depends
    only on (rows, seed, epoch, world, micro, accumulation), so resuming at `start_step` is an index
    computation, never a replay of the data loader.
    """

    def __init__(self, row_tokens: Sequence[int], world_size: int, rank: int, micro_batch_size: int,
                 grad_accum: int, seed: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.row_tokens = list(row_tokens)
        self.world_size, self.rank = world_size, rank
        self.micro, self.accum, self.seed = micro_batch_size, grad_accum, seed
        self.epoch = 0
        self.start_step = 0  # optimizer steps of this epoch already done (resume)

    @property
    def rows_per_step(self) -> int:
        return self.world_size * self.micro * self.accum

    def steps_per_epoch(self) -> int:
        return -(-len(self.row_tokens) // self.rows_per_step)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def step_blocks(self) -> list[list[list[int]]]:
        """blocks[step][rank] = that rank's rows for the step (accum x micro, in order)."""
        order = list(range(len(self.row_tokens)))
        random.Random(self.seed + self.epoch).shuffle(order)
        order += [-1] * (self.steps_per_epoch() * self.rows_per_step - len(order))
        blocks = []
        for s in range(self.steps_per_epoch()):
            block = order[s * self.rows_per_step:(s + 1) * self.rows_per_step]
            block.sort(key=lambda i: -self.row_tokens[i] if i >= 0 else 1)
            per_rank: list[list[int]] = [[] for _ in range(self.world_size)]
            for j, idx in enumerate(block):
                lap, pos = divmod(j, self.world_size)
                per_rank[pos if lap % 2 == 0 else self.world_size - 1 - pos].append(idx)
            blocks.append(per_rank)
        return blocks

    def __iter__(self) -> Iterator[list[int]]:
        for per_rank in self.step_blocks()[self.start_step:]:
            mine = per_rank[self.rank]
            for k in range(self.accum):
                yield mine[k * self.micro:(k + 1) * self.micro]

    def __len__(self) -> int:
        return (self.steps_per_epoch() - self.start_step) * self.accum


class PackedRows:
    """Map-style view of a packed `datasets.Dataset` for a DataLoader; index -1 (padding slot) gives None."""

    def __init__(self, rows: Any):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict | None:
        return None if i < 0 else self.rows[int(i)]
