"""micro_batch_size auto: the sizes tried (the whole step, then its halves down to train_batch_size) and the largest
that fits, agreed over ranks, on a model that runs out of memory above a row count (a CPU fits every size)."""

from types import SimpleNamespace

import pytest
import torch

from distil_kit import KitError, RunConfig, micro_batch
from distil_kit.distributed import World


@pytest.mark.parametrize(
    "step_rows, smallest, sizes",
    [
        (256, 32, [256, 128, 64, 32]),
        (256, 48, [256, 128, 64]),  # 32 is below train_batch_size
        (96, 32, [96, 48]),  # 24: below it too
        (24, 1, [24, 12, 6, 3]),  # 3 has no half
        (2, 1, [2, 1]),
        (32, 32, [32]),
    ],
)
def test_auto_micro_batch_tries_the_step_then_each_half_that_divides_it(step_rows, smallest, sizes):
    assert micro_batch.candidates(step_rows, smallest) == sizes


class Limited(torch.nn.Module):
    """A classifier that runs out of memory above ``rows`` rows a forward (as a GPU would); it notes each batch's
    shape and the dtype it computes in."""

    def __init__(self, rows: int):
        super().__init__()
        self.rows, self.seen, self.dtypes = rows, [], []
        self.embed, self.head = torch.nn.Embedding(2, 4), torch.nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        self.seen.append(tuple(input_ids.shape))
        if len(input_ids) > self.rows:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        logits = self.head(self.embed(input_ids).mean(1))
        self.dtypes.append(logits.dtype)
        return SimpleNamespace(logits=logits)


def _config(**extra) -> RunConfig:
    """FlagPerf's 32 x 8 step, as one micro-batch of 256 rows (auto on a GPU)."""
    return RunConfig.from_dict(
        {"train_batch_size": 32, "gradient_accumulation_steps": 8, "precision": "fp32", "cuda_graphs": False} | extra
    )


@pytest.mark.parametrize(
    "fits, chosen, tried",
    [
        (256, 256, [256]),
        (1000, 256, [256]),
        (200, 128, [256, 128]),
        (64, 64, [256, 128, 64]),
        (32, 32, [256, 128, 64, 32]),
    ],
)
def test_auto_micro_batch_is_the_largest_part_of_the_step_that_fits(fits, chosen, tried):
    model = Limited(fits)
    assert micro_batch.fit(_config(), model, 40, torch.device("cpu"), World()) == chosen
    assert model.seen == [(rows, 40) for rows in tried]  # at the run's widest batch
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_a_trial_computes_in_the_runs_precision(precision, dtype):
    model = Limited(64)  # bf16 activations: half the memory of fp32's
    assert micro_batch.fit(_config(precision=precision), model, 40, torch.device("cpu"), World()) == 64
    assert model.dtypes == [dtype]


def test_auto_micro_batch_fails_in_one_line_when_not_even_train_batch_size_fits():
    model = Limited(31)
    with pytest.raises(KitError) as error:
        micro_batch.fit(_config(gradient_accumulation_steps=2), model, 40, torch.device("cpu"), World())
    assert str(error.value) == (
        "parameter 'train_batch_size'=32: even 32 rows of 40 tokens do not fit in cpu's memory for a training "
        "step; lower it (and raise gradient_accumulation_steps to keep the global batch)"
    )
    assert model.seen == [(64, 40), (32, 40)]


def _other_rank_fits(monkeypatch, rows: int) -> None:
    """A second rank whose trials fit ``rows`` rows (0: none): all_reduce combines its value as torch's would."""
    import torch.distributed as dist

    def all_reduce(tensor, op=dist.ReduceOp.SUM, **kwargs):
        other = torch.tensor([-rows])  # each rank contributes the negative of the rows it fits
        combine = {dist.ReduceOp.MAX: torch.maximum, dist.ReduceOp.MIN: torch.minimum, dist.ReduceOp.SUM: torch.add}
        tensor.copy_(combine[op](tensor, other))

    monkeypatch.setattr(dist, "all_reduce", all_reduce)


@pytest.mark.parametrize("here, there, agreed", [(256, 64, 64), (64, 256, 64), (128, 128, 128)])
def test_every_rank_trains_the_micro_batch_that_fits_on_all_of_them(monkeypatch, here, there, agreed):
    _other_rank_fits(monkeypatch, there)
    world = World(rank=0, size=2, backend="gloo")
    assert micro_batch.fit(_config(), Limited(here), 40, torch.device("cpu"), world) == agreed


def test_a_rank_where_nothing_fits_fails_every_rank(monkeypatch):
    _other_rank_fits(monkeypatch, 0)
    with pytest.raises(KitError, match=r"even 32 rows of 40 tokens do not fit"):
        micro_batch.fit(_config(), Limited(256), 40, torch.device("cpu"), World(rank=1, size=2, backend="gloo"))


@pytest.mark.parametrize(
    "size, cuda_graphs, held",
    [
        (1, False, 2),  # AdamW's exp_avg and exp_avg_sq
        (2, False, 3),  # and DDP's gradient buckets
        (1, True, 5),  # and a graph capture's copy of the weights and both moments
        (2, True, 6),
    ],
)
def test_a_trial_holds_what_training_will_hold_beside_the_step(monkeypatch, size, cuda_graphs, held):
    _other_rank_fits(monkeypatch, 256)
    trials = []
    real_trial = micro_batch.trial_step

    def trial(model, rows, width, device, precision, held):
        trials.append(held)
        real_trial(model, rows, width, device, precision, held)

    monkeypatch.setattr(micro_batch, "trial_step", trial)
    world = World(size=size, backend="gloo" if size > 1 else None)
    assert micro_batch.fit(_config(cuda_graphs=cuda_graphs), Limited(64), 40, torch.device("cpu"), world) == 64
    assert trials == [held] * 3
