"""The optimisation recipe (docs/recipe.md): FlagPerf's two AdamW groups, the run's optimizer steps, the AdamW
options a run asks for and the linear decay to zero without warm-up."""

import pytest
import torch

from distil_kit.recipe import make_optimizer, make_scheduler, optimizer_groups, total_optimizer_steps


class Named(torch.nn.Module):
    """Parameters named as BERT ("LayerNorm"), DistilBERT ("layer_norm") and a classifier name them, one frozen."""

    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(3, 3)  # dense.weight decays, dense.bias does not
        self.LayerNorm = torch.nn.LayerNorm(3)
        self.output_layer_norm = torch.nn.LayerNorm(3)
        self.classifier = torch.nn.Linear(3, 2, bias=False)
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def _names(model, group) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return sorted(names[id(p)] for p in group["params"])


def test_weight_decay_spares_biases_and_layer_norm_weights_and_skips_frozen_parameters():
    model = Named()
    decay, no_decay = optimizer_groups(model, weight_decay=0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    assert _names(model, decay) == ["classifier.weight", "dense.weight"]
    assert _names(model, no_decay) == [
        "LayerNorm.bias",
        "LayerNorm.weight",
        "dense.bias",
        "output_layer_norm.bias",
        "output_layer_norm.weight",
    ]


@pytest.mark.parametrize(
    "batches, accumulation, epochs, expected",
    [
        (16, 1, 3, 48),  # one micro-batch a step
        (24, 8, 2, 6),  # 3 whole steps an epoch
        (29, 8, 2, 8),  # 3 whole steps and a partial one of 5 micro-batches an epoch: ceil(29 / 8) = 4
        (3, 8, 1, 1),  # an epoch shorter than one step is a step
    ],
)
def test_a_run_takes_an_optimizer_step_per_accumulation_group_partial_ones_included(
    batches, accumulation, epochs, expected
):
    assert total_optimizer_steps(batches, accumulation, epochs) == expected


@pytest.mark.parametrize("fused, capturable", [(False, False), (True, False), (False, True)])
def test_the_optimizer_is_adamw_with_the_runs_lr_groups_and_kernel(fused, capturable):
    model = Named()
    optimizer = make_optimizer(model, 2e-5, 0.01, fused=fused, capturable=capturable)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [2e-5, 2e-5]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 5]
    assert optimizer.defaults["fused"] is (True if fused else None)  # None: torch's default kernel
    assert optimizer.defaults["capturable"] is capturable
    # by default: torch's own kernel, not capturable
    default = make_optimizer(model, 2e-5, 0.01)
    assert default.defaults["fused"] is None and default.defaults["capturable"] is False


def test_the_learning_rate_decays_linearly_to_zero_from_the_first_step():
    optimizer = make_optimizer(torch.nn.Linear(2, 2), 1e-3, 0.0)
    scheduler = make_scheduler(optimizer, 4)
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    # no warm-up: the full lr at the first step, then 1e-3 * (4 - k) / 4 after k steps
    assert lrs == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0], abs=1e-15)
