"""From a tokenized split to batches, on small hand-made splits: the dataset's rows, the trimming and packing
collates, the seeded epoch samplers across ranks, the dev batches and the run's training loader."""

import numpy as np
import pytest
import torch

from distil_kit import RunConfig
from distil_kit.batching import (
    EpochBatches,
    PackCollate,
    SplitDataset,
    TrimCollate,
    batches_of_each_shape,
    collate_for,
    eval_batches,
    most_packed_rows,
    shape,
    tensors,
    train_loader,
)
from distil_kit.data import Split
from distil_kit.packing import bins


def _split(lengths: list[int], width: int) -> Split:
    """Rows with these real lengths, padded to ``width``; row i's token j is 100 * i + j + 1 (0: padding), its
    label i % 2 and its idx 1000 + i."""
    n = len(lengths)
    mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids = (100 * np.arange(n)[:, None] + np.arange(width)[None, :] + 1) * mask
    return Split(1000 + np.arange(n), np.array(["x"] * n), np.arange(n) % 2, ids, mask)


def _rows(split, keys):
    return [SplitDataset(split)[key] for key in keys]


def test_a_dataset_item_is_a_rows_arrays_and_its_loss_weight():
    split = _split([3, 5, 2], 8)
    dataset = SplitDataset(split)
    assert len(dataset) == 3
    ids, mask, label, idx, weight = dataset[1]
    assert ids.tolist() == [101, 102, 103, 104, 105, 0, 0, 0] and mask.tolist() == [1] * 5 + [0] * 3
    assert (label, idx, weight) == (1, 1001, 1.0)  # a plain row index: the whole weight
    assert dataset[(2, 0.25)][2:] == (0, 1002, 0.25)  # a sampler's key: (row, weight)


@pytest.mark.parametrize(
    "multiple, width",
    [(1, 5), (0, 5), (3, 6), (4, 8), (16, 9)],  # the longest row (5) rounded up, never past the split's width (9)
)
def test_a_trimmed_batch_is_as_wide_as_its_longest_row_rounded_up(multiple, width):
    split = _split([3, 5, 2], 9)
    collate = TrimCollate(multiple)
    batch = collate(_rows(split, [(0, 0.5), (1, 0.5), (2, 0.0)]))  # the last: a filler row of weight 0
    assert (batch.input_ids.shape, batch.labels.shape) == collate.shape(split.lengths, 9) == ((3, width), (3,))
    assert torch.equal(batch.input_ids, torch.as_tensor(split.input_ids[:, :width]))
    assert torch.equal(batch.attention_mask, torch.as_tensor(split.attention_mask[:, :width]))
    assert batch.labels.tolist() == [0, 1, 0] and batch.idx.tolist() == [1000, 1001, 1002]
    assert batch.weight.tolist() == [0.5, 0.5, 0.0] and batch.weight.dtype == torch.float32
    assert (batch.n_rows, batch.n_tokens) == (2, 8)  # the filler row is not counted: 3 + 5 tokens
    assert batch.position_ids is None and batch.starts is None


def test_a_packed_batch_holds_whole_sentences_longest_first():
    # lengths 3, 5, 2 in rows of 8: first-fit decreasing puts sentence 1 (5) then 0 (3) in row 0, 2 (2) in row 1
    split = _split([3, 5, 2], 9)
    collate = PackCollate(8)
    batch = collate(_rows(split, [(0, 0.25), (1, 0.25), (2, 0.0)]))
    assert (batch.input_ids.shape, batch.labels.shape) == collate.shape(split.lengths, 9) == ((2, 8), (3,))
    assert batch.input_ids.tolist() == [[101, 102, 103, 104, 105, 1, 2, 3], [201, 202, 0, 0, 0, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 0, 0, 0, 0, 0, 0]]
    assert batch.starts.tolist() == [5, 0, 8]  # each sentence's first token in the flattened [2 * 8] rows
    integers = (batch.input_ids, batch.attention_mask, batch.position_ids, batch.starts)
    assert {t.dtype for t in integers} == {torch.int64}
    assert batch.labels.tolist() == [0, 1, 0] and batch.idx.tolist() == [1000, 1001, 1002]
    assert batch.weight.tolist() == [0.25, 0.25, 0.0] and batch.weight.dtype == torch.float32
    assert (batch.n_rows, batch.n_tokens) == (2, 8)  # the filler sentence is not counted
    assert collate.shape([5, 5, 5, 2], 9) == ((3, 8), (4,))


def test_a_packed_batch_of_a_fixed_shape_adds_empty_rows_and_filler_sentences():
    split = _split([3, 5, 2], 9)
    collate = PackCollate(8, rows=4, sentences=5)
    batch = collate(_rows(split, [(0, 0.25), (1, 0.25), (2, 0.5)]))
    assert (batch.input_ids.shape, batch.labels.shape) == collate.shape([3, 5], 9) == ((4, 8), (5,))
    assert batch.input_ids.tolist()[:2] == [[101, 102, 103, 104, 105, 1, 2, 3], [201, 202, 0, 0, 0, 0, 0, 0]]
    assert batch.input_ids[2:].eq(0).all() and batch.attention_mask[2:].eq(0).all()  # empty rows: padding only
    assert batch.starts.tolist() == [5, 0, 8, 0, 0] and batch.idx.tolist() == [1000, 1001, 1002, -1, -1]
    assert batch.labels.tolist() == [0, 1, 0, 0, 0] and batch.weight.tolist() == [0.25, 0.25, 0.5, 0.0, 0.0]
    assert (batch.n_rows, batch.n_tokens) == (3, 10)
    with pytest.raises(ValueError, match="pack into 3 rows, more than the batch's 2"):
        PackCollate(8, rows=2, sentences=5)(_rows(split, [1, 1, 1, 2]))
    with pytest.raises(ValueError, match="4 sentences for a packed batch of 3"):
        PackCollate(8, rows=4, sentences=3)(_rows(split, [0, 1, 2, 2]))


def test_a_step_reads_a_batchs_tensors_and_is_compiled_per_shape():
    split = _split([3, 5, 2], 9)
    trimmed, packed = TrimCollate()(_rows(split, range(3))), PackCollate(8)(_rows(split, range(3)))
    assert list(tensors(trimmed)) == ["input_ids", "attention_mask", "labels", "weight"]
    assert list(tensors(packed)) == ["input_ids", "attention_mask", "labels", "weight", "position_ids", "starts"]
    assert all(tensors(packed)[name] is getattr(packed, name) for name in tensors(packed))
    assert shape(trimmed) == ((3, 5), (3,)) and shape(packed) == ((2, 8), (3,))


def _keys(sampler):
    return [[(row, weight) for row, weight in batch] for batch in sampler]


def test_epoch_batches_cut_steps_into_each_ranks_micro_batches():
    """10 rows, 2 rows a micro-batch on each of 2 ranks, 2 micro-batches a step: steps of 8 and 2 rows."""
    lengths = np.arange(10) + 1
    ranks = [EpochBatches(lengths, 2, seed=5, accumulation=2, rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].global_batch_size == 4 and len(ranks[0]) == 3  # ceil(10 / 4) micro-batches an epoch
    batches = [_keys(r) for r in ranks]
    assert [len(b) for b in batches[0]] == [len(b) for b in batches[1]] == [2, 2, 1]
    rows = [row for i in range(3) for rank in (0, 1) for row, _ in batches[rank][i]]
    assert sorted(rows) == list(range(10))  # every row once, across ranks
    assert rows == list(np.random.default_rng([5, 0]).permutation(10))  # the seeded order, rank 0's part first
    # a row's weight: world size over its step's rows, so each step's weights sum to the world size
    assert {w for rank in (0, 1) for b in batches[rank][:2] for _, w in b} == {2 / 8}
    assert {w for rank in (0, 1) for _, w in batches[rank][2]} == {2 / 2}


def test_a_rank_without_a_row_in_the_last_micro_batch_gets_a_filler_row():
    lengths = np.arange(9) + 1  # a last step of 1 row for 2 ranks
    ranks = [EpochBatches(lengths, 2, seed=0, accumulation=2, rank=r, world_size=2) for r in (0, 1)]
    last0, last1 = _keys(ranks[0])[-1], _keys(ranks[1])[-1]
    assert last0[0][1] == 2.0 and len(last0) == 1  # the step's only row, weighted world size over 1 row
    assert last1 == [(last0[0][0], 0.0)]  # the same row again, adding nothing


def test_epoch_batches_follow_the_seed_and_epoch_and_skip_on_resume():
    lengths = np.arange(12) + 1
    sampler = EpochBatches(lengths, 3, seed=1)
    first = _keys(sampler)
    assert len(first) == len(sampler) == 4 and {w for b in first for _, w in b} == {1 / 3}
    assert _keys(EpochBatches(lengths, 3, seed=1)) == first
    assert _keys(EpochBatches(lengths, 3, seed=2)) != first
    sampler.set_epoch(1)
    second = _keys(sampler)
    assert second != first and sorted(r for b in second for r, _ in b) == list(range(12))
    sampler.set_epoch(1, skip=3)  # resumed after the epoch's first 3 micro-batches
    assert _keys(sampler) == second[3:]
    sampler.set_epoch(1)
    assert _keys(sampler) == second  # skip: 0 unless given


def test_bucketed_steps_train_their_rows_shortest_first():
    lengths = np.random.default_rng(0).integers(2, 6, size=300)  # steps of 100 rows, many of the same length
    plain = EpochBatches(lengths, 25, seed=0, accumulation=4)
    bucketed = EpochBatches(lengths, 25, seed=0, accumulation=4, bucketed=True)
    plain_steps = [sum(_keys(plain)[i : i + 4], []) for i in range(0, 12, 4)]
    bucketed_steps = [sum(_keys(bucketed)[i : i + 4], []) for i in range(0, 12, 4)]
    assert len(bucketed_steps) == 3
    for p, b in zip(plain_steps, bucketed_steps, strict=True):
        assert sorted(b) == sorted(p)  # the same rows and weights per step
        assert b == sorted(p, key=lambda key: lengths[key[0]])  # sorted by length, ties in the random order


def test_dev_batches_are_sorted_by_length_and_dealt_to_ranks():
    lengths = [5, 1, 4, 2, 3, 1]  # by length, ties in row order: rows 1, 5, 3, 4, 2, 0
    assert eval_batches(lengths, 2) == [[1, 5], [3, 4], [2, 0]]
    assert eval_batches(lengths, 4, rank=0, world_size=2) == [[1, 3, 2]]
    assert eval_batches(lengths, 2, rank=1, world_size=2) == [[5, 4], [0]]
    many = np.random.default_rng(0).integers(1, 4, size=60)  # ties among many rows: still in row order
    assert sum(eval_batches(many, 8), []) == sorted(range(60), key=lambda i: many[i])


def test_a_run_collates_packed_or_trimmed_as_configured():
    split = _split([61, 3], 70)
    packed = collate_for(split, RunConfig.from_dict({"packing": True}))
    assert isinstance(packed, PackCollate) and packed.width == 64  # the longest row (61) rounded up to 8
    trimmed = collate_for(split, RunConfig.from_dict({"pad_to_multiple_of": 16}))
    assert isinstance(trimmed, TrimCollate) and trimmed.width(61, 70) == 64


def test_the_training_loader_gives_the_samplers_micro_batches_without_touching_the_global_rng():
    """40 rows, 16 a step in micro-batches of 8 (two accumulated) on 2 ranks: 4 rows a rank, steps of 16 and 8."""
    split = _split([(7 * i) % 30 + 2 for i in range(40)], 32)
    cfg = RunConfig.from_dict(
        {"train_batch_size": 4, "gradient_accumulation_steps": 2, "micro_batch_size": 4, "bucket_batches": True}
        | {"seed": 7, "pad_to_multiple_of": 8}
    )
    sampler, loader = train_loader(split, cfg, rank=1, world_size=2, pin_memory=False)
    expected = EpochBatches(split.lengths, 4, 7, accumulation=2, bucketed=True, rank=1, world_size=2)
    assert loader.batch_sampler is sampler and _keys(sampler) == _keys(expected)
    rng = torch.get_rng_state()
    batches = list(loader)
    assert torch.equal(torch.get_rng_state(), rng)  # a resumed run's dropout draws do not depend on the loader
    assert [b.idx.tolist() for b in batches] == [[1000 + r for r, _ in keys] for keys in _keys(sampler)]
    assert [b.weight.tolist() for b in batches] == [[w for _, w in keys] for keys in _keys(sampler)]
    assert all(b.input_ids.shape[1] % 8 == 0 for b in batches)
    assert not loader.pin_memory and loader.num_workers == 0 and not loader.persistent_workers
    _, workers = train_loader(split, cfg.replace(num_workers=1), pin_memory=True)
    assert workers.pin_memory and workers.num_workers == 1 and workers.persistent_workers


def test_a_packed_run_on_graphs_has_one_shape_its_most_packed_rows():
    """CUDA graphs and packing: every micro-batch of every epoch has one shape, the short last step's too."""
    split = _split([(7 * i) % 30 + 2 for i in range(40)], 32)
    cfg = RunConfig.from_dict(
        {"train_batch_size": 16, "micro_batch_size": 16, "epochs": 3, "seed": 5} | {"packing": True}
    )
    sampler, loader = train_loader(split, cfg.replace(cuda_graphs=True))
    most = max(
        len(bins(split.lengths[[row for row, _ in keys]], 32))
        for epoch in range(3)
        for keys in (sampler.set_epoch(epoch) or list(sampler))
    )
    sampler.set_epoch(1, skip=1)
    assert most_packed_rows(sampler, 32, range(3)) == most and (sampler.epoch, sampler.skip) == (0, 0)
    shapes, sentences = set(), 0
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in loader:
            shapes.add(shape(batch))
            sentences += batch.n_rows
    assert shapes == {((most, 32), (16,))} and sentences == 3 * 40  # steps of 16, 16 and 8 rows
    assert batches_of_each_shape(loader, range(3)) and len(batches_of_each_shape(loader, range(3))) == 1
    _, eager = train_loader(split, cfg)  # without graphs, shapes as the sentences need
    assert len({shape(b) for b in eager}) > 1


def test_each_batch_shape_a_run_will_train_is_known_ahead():
    """What CUDA graphs capture ahead: one batch of each shape the loader gives over the epochs left (a resumed
    epoch's skipped micro-batches not among them), first come first, each the loader's own batch of that shape; the
    sampler left where the run goes on."""
    split = _split([(7 * i) % 30 + 2 for i in range(40)], 32)
    cfg = RunConfig.from_dict(
        {"train_batch_size": 4, "gradient_accumulation_steps": 4, "micro_batch_size": 4}
        | {"bucket_batches": True, "pad_to_multiple_of": 8}
    )
    sampler, loader = train_loader(split, cfg)
    assert (sampler.rank, sampler.world_size, loader.pin_memory) == (0, 1, False)  # one process, pageable memory
    for epochs, skip in [(range(2), 0), (range(1, 3), 2), (range(1, 3), 9)]:
        seen = {}
        for epoch in epochs:
            sampler.set_epoch(epoch, skip=skip if epoch == epochs.start else 0)
            for batch in loader:
                seen.setdefault(shape(batch), batch)
        ahead = batches_of_each_shape(loader, epochs, skip=skip) if skip else batches_of_each_shape(loader, epochs)
        assert [shape(b) for b in ahead] == list(seen)
        assert all(torch.equal(a.idx, b.idx) for a, b in zip(ahead, seen.values(), strict=True))
        assert (sampler.epoch, sampler.skip) == (epochs.start, skip)
    assert len(seen) > 3 and len({rows for rows, _ in seen}) > 1  # several widths, the short last step among them
    assert batches_of_each_shape(loader, range(3, 3)) == []
