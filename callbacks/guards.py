"""Numerical guard: stop a run at the first non-finite meta-loss or meta-gradient, before the
optimiser steps on it, so that no NaN or infinite weight is ever stepped or checkpointed.

``train.py`` adds ``FiniteLossGuard`` to every run (its settings are ``--finite_guard.*``).
What it checks, and when:

* ``on_before_backward``: records the meta-loss of the step (every micro-batch when gradients
  are accumulated);
* ``on_before_optimizer_step`` (after ``backward``, before ``optimizer.step`` and before
  gradient clipping): the recorded losses and every parameter gradient must be finite, or it
  raises ``NonFiniteLossError`` naming the global step and the architectures of that step. The
  optimiser step is not taken. Under DDP the verdict is reduced over ranks first, so that all
  ranks stop together instead of leaving one waiting in a collective. The check is one flag per
  tensor computed on the device and read back once: one host synchronisation per step (on a
  GPU, reading each gradient's verdict would stall the stream once per parameter);
* ``on_save_checkpoint`` (while a checkpoint is assembled, before anything is written): every
  floating tensor of the state dict must be finite, else it raises and the file is not written.
  This covers what the first check cannot see (a weight or a BatchNorm statistic that overflowed
  without a non-finite gradient).

Lightning's ``ModelCheckpoint`` writes nothing when an exception ends ``fit`` unless it was
built with ``save_on_exception=True`` (off in this project's defaults): the newest ``last.ckpt``
on disk stays the one written at the end of the last complete epoch.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """A NaN or infinite meta-loss, meta-gradient or weight: a numerical fault of the run (not
    a settings error); the run stops before the optimiser steps on it."""

    def __init__(self, message: str, step: int, architectures: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.step = step
        self.architectures = list(architectures)


def _describe_architectures(archs: Sequence[Any]) -> str:
    """Distinct architectures in order of first use, with how many tasks used each."""
    if not archs:
        return "not recorded"
    counts: dict[str, int] = {}
    for arch in archs:
        counts[str(arch)] = counts.get(str(arch), 0) + 1
    return ", ".join(f"{name} (x{n})" if n > 1 else name for name, n in counts.items())


def _finite_flags(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """One boolean per tensor on ``device``, True where every element is finite (integer
    tensors are), computed without reading anything back to the host."""
    flags = [
        (torch.isfinite(t).all() if t.is_floating_point() else torch.ones((), dtype=torch.bool, device=t.device))
        for t in tensors
    ]
    return torch.stack([f.to(device) for f in flags]) if flags else torch.ones(0, dtype=torch.bool, device=device)


def _names_where_false(names: Sequence[str], flags: Sequence[bool], limit: int = 5) -> list[str]:
    bad = [name for name, ok in zip(names, flags) if not ok]
    return bad if len(bad) <= limit else bad[:limit] + [f"... ({len(bad)} in all)"]


def _non_finite_names(named: Sequence[tuple[str, torch.Tensor]], limit: int = 5) -> list[str]:
    """The names of the tensors holding a NaN or an infinity (at most ``limit``, then a count),
    with one host synchronisation."""
    named = [(n, t) for n, t in named if t.is_floating_point()]
    if not named:
        return []
    flags = _finite_flags([t for _, t in named], named[0][1].device)
    return [] if bool(flags.all()) else _names_where_false([n for n, _ in named], flags.tolist(), limit)


class FiniteLossGuard(Callback):
    """Stops meta-training at the first NaN/inf meta-loss or meta-gradient, before the
    optimiser step, and refuses to write a checkpoint holding a non-finite weight.

    Args:
        check_gradients: also check every parameter gradient before each optimiser step (one
            ``isfinite`` pass over the gradients; the SuperNet is small). The loss is always
            checked.
        check_checkpoints: check every floating tensor of the state dict before a checkpoint
            is written.
    """

    def __init__(self, check_gradients: bool = True, check_checkpoints: bool = True) -> None:
        self.check_gradients = check_gradients
        self.check_checkpoints = check_checkpoints
        self._losses: list[torch.Tensor] = []

    # -- training ------------------------------------------------------------------------
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        losses, self._losses = self._losses, []
        grads = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None] if self.check_gradients else []
        flags = _finite_flags(losses + [g for _, g in grads], pl_module.device)  # nothing read yet
        bad = (~flags).sum().float()
        if trainer.world_size > 1:  # every rank must stop, or the others wait in a collective
            bad = trainer.strategy.reduce(bad, reduce_op="sum")
        if float(bad) == 0.0:  # the one host synchronisation of a good step
            return
        verdicts = flags.tolist()
        loss_ok = all(verdicts[: len(losses)])
        bad_grads = _names_where_false([n for n, _ in grads], verdicts[len(losses):])
        step = trainer.global_step
        archs = list(getattr(pl_module, "last_step_archs", None) or [])
        if not loss_ok:
            values = ", ".join(f"{float(loss.float().mean()):g}" for loss in losses)
            what = f"the meta-loss is not finite ({values})"
        elif bad_grads:
            what = f"the meta-gradient is not finite (parameters: {', '.join(bad_grads)})"
        else:
            what = "another DDP rank saw a non-finite meta-loss or meta-gradient"
        rank = f" on rank {trainer.global_rank}" if trainer.world_size > 1 else ""
        raise NonFiniteLossError(
            f"{what} at global step {step} (epoch {trainer.current_epoch}, batch "
            f"{trainer.fit_loop.epoch_loop.batch_idx}); architectures of that step{rank}: "
            f"{_describe_architectures(archs)}; the optimiser step was not taken and no "
            "checkpoint was written",
            step=step,
            architectures=archs,
        )

    # -- checkpoints ---------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self.check_checkpoints:
            return
        bad = _non_finite_names(list(checkpoint.get("state_dict", {}).items()))
        if bad:
            raise NonFiniteLossError(
                f"refusing to write a checkpoint at global step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}): non-finite values in {', '.join(bad)}",
                step=trainer.global_step,
            )

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._losses = []
