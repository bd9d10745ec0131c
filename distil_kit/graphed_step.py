"""Whole training steps as CUDA graphs: forward, loss, backward and the AdamW update, one graph per batch shape.

At 13-token sentences and batch 32 a step is several hundred small kernels: launched one by one from Python, the
GPU spends most of the step waiting for the host. A captured graph launches them all at once. Shapes are few
(padded: the batch size times widths padded to a multiple of 8, up to the longest sentence; packed: one for the
whole run, ``batching.train_loader``) and known before training from the seeded order, so each is captured when the
training clock starts (``engine.Trainer.capture_ahead``), after warm-up steps that run every lazy initialisation
(cuBLAS handles, compilation, the optimizer's state) outside the capture. Warm-up steps change the weights, so the
weights, the optimizer state and the CUDA RNG are put back as they were before capturing: the run trains the steps
it would without graphs (shown equal to float
tolerance in fp32; in bf16 the attention kernel and the autocast cache differ from an eager run's). The copy of that
state (about 0.8 GB for DistilBERT's weights and AdamW moments) is on the GPU while a shape is captured, and counts in
the run's peak memory.

What a replay reads and writes lives at fixed addresses: the weights, the optimizer state, the learning rate (a
device tensor the scheduler fills), and the static input buffers each batch is copied into. Gradients and
activations live in one memory pool shared by all graphs, which replay in any order (PyTorch documents pool sharing
for replays in capture order): this is safe because every replay is complete in itself (nothing it leaves in the
pool is read after the next replay starts; the loss is copied out at once; the gradients are let go after capture).

The whole run (``GraphedStep.running``) is on a stream of its own, never on the default (legacy) stream: a capture
whose backward touches the legacy stream fails ("operation would make the legacy stream depend on a capturing
blocking stream").

When graphs apply is ``graphs_fit``, beside the step it guards; ``resolve.resolve_config`` asks it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .batching import shape, tensors

WARMUP_STEPS = 2
# The attention kernels the graphed steps are tested with (dropout included). cuDNN's, which torch picks first for
# bf16 on recent GPUs, is not among them: it is untested inside a graph.
CAPTURABLE_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


REQUIREMENTS = (
    "a CUDA device, one process, one micro-batch per optimizer step (gradient_accumulation_steps 1, or "
    "micro_batch_size the whole step), num_workers 0 and a precision other than fp16"
)


def graphs_fit(device: torch.device, world_size: int, accumulation: int, precision: str, num_workers: int) -> bool:
    """Whether a whole step can be one graph (``REQUIREMENTS``). One process: DDP's gradient all-reduce is not
    captured. One micro-batch per step: a graph is one forward, backward and update. Not fp16: the grad scaler's
    inf check reads its result on the host. No DataLoader workers: their pin-memory thread could allocate on the
    device during a capture."""
    return (
        device.type == "cuda" and world_size == 1 and accumulation == 1 and precision != "fp16" and num_workers == 0
    )


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    loss: torch.Tensor


def capturable_lr(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Each group's learning rate as a device tensor, which the graphs read and the scheduler fills in place.

    Set after the scheduler is made (its base rates stay floats, so a scheduler step needs no host sync) and after
    loading a checkpoint (which puts back the saved values).
    """
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


class GraphedStep:
    """``step([batch])`` trains one batch (forward, loss, backward, optimizer step) by replaying its shape's graph:
    the contract of ``step.EagerStep`` for one micro-batch per step. A new shape is captured first.

    ``loss_fn(**batching.tensors(batch))`` returns the batch's loss (forward under autocast). Made
    after the scheduler (see ``capturable_lr``).
    """

    scaler = None  # graphs_fit: never fp16

    def __init__(
        self,
        loss_fn: Callable[..., torch.Tensor],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
    ):
        self.loss_fn, self.model, self.optimizer, self.device = loss_fn, model, optimizer, device
        self.graphs: dict[tuple, _Captured] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device)
        capturable_lr(optimizer, device)

    def optimizer_loaded(self) -> None:
        """Loading a checkpoint put back plain numbers where the graphs read device tensors."""
        capturable_lr(self.optimizer, self.device)

    @contextmanager
    def running(self):
        """Run the training loop inside this: its work (warm-ups and captures too) goes on ``self.stream``."""
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            caller.wait_stream(self.stream)

    def capture(self, batch) -> None:
        """Capture ``batch``'s shape unless captured already; the run's state is left as it was."""
        if shape(batch) not in self.graphs:
            self.graphs[shape(batch)] = self._capture(batch)

    def __call__(self, micro_batches) -> torch.Tensor:
        """The step's loss (a fresh tensor); the weights are updated."""
        (batch,) = micro_batches  # graphs_fit: no gradient accumulation
        self.capture(batch)  # a shape the run did not capture ahead (``engine.Trainer.capture_ahead``)
        captured = self.graphs[shape(batch)]
        for name, tensor in tensors(batch).items():
            captured.inputs[name].copy_(tensor, non_blocking=True)
        captured.graph.replay()
        return captured.loss.clone()

    def _train_step(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with sdpa_kernel(CAPTURABLE_ATTENTION):
            loss = self.loss_fn(**inputs)
            loss.backward()
        self.optimizer.step()
        return loss

    def _capture(self, batch) -> _Captured:
        inputs = {name: tensor.to(self.device, copy=True) for name, tensor in tensors(batch).items()}
        saved = self._save_state()
        for _ in range(WARMUP_STEPS):
            self.optimizer.zero_grad(set_to_none=True)
            self._train_step(inputs)
        self._restore_state(saved)
        # Gradients of None make backward write fresh ones inside the capture: each replay sets, not adds, them.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            loss = self._train_step(inputs)
        self.optimizer.zero_grad(set_to_none=True)  # the captured gradients belong to the graph alone
        return _Captured(graph, inputs, loss)

    def _save_state(self) -> dict:
        state = {id(t): t.clone() for t in self._state_tensors()}
        return {"tensors": state, "rng": torch.cuda.get_rng_state(self.device)}

    def _restore_state(self, saved: dict) -> None:
        with torch.no_grad():
            for t in self._state_tensors():
                old = saved["tensors"].get(id(t))
                # State first made by the warm-up is AdamW's fresh state: zero moments and step count.
                t.copy_(old) if old is not None else t.zero_()
        torch.cuda.set_rng_state(saved["rng"], self.device)

    def _state_tensors(self) -> list[torch.Tensor]:
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
        return tensors
