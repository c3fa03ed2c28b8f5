"""The LightningModule: a SuperNet and its meta-train step.

Lightning owns the loop, the optimiser step, devices and checkpoints; this module only says
what one meta-batch does: for each task, take an architecture from the sampler, adapt a clone
of that subnet on the support set, and average the query losses into one meta-loss. One
backward per meta-batch keeps it compatible with DDP's gradient averaging.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Optional

import pytorch_lightning as pl
import torch

from lightning_metanas import seeding
from lightning_metanas.errors import SettingsError, require_int
from lightning_metanas.maml import TaskAdapter
from lightning_metanas.meta_config import NORMS, MetaConfig
from lightning_metanas.metrics import TaskAccuracy
from lightning_metanas.samplers import SAMPLING_RULES, ArchitectureSampler, FixedSampler, SamplingRule, SpaceSampler
from lightning_metanas.search_space import Architecture, ArchitectureError, SearchSpace
from lightning_metanas.supernet import SuperNet


def _as_settings(cls, value):
    # Checkpoints store settings as plain dicts (loadable with weights_only=True).
    return cls(**value) if isinstance(value, dict) else value


class MetaNASModule(pl.LightningModule):
    """Meta-learns the weights of a SuperNet over a distribution of few-shot tasks.

    Args:
        ways: classes per task (linked from the data module by the CLI).
        image_channels: channels of the input images (linked from the data module).
        image_size: side of the (square) input images, for FLOP counts.
        search_space: operations, widths and depths the SuperNet holds.
        meta: inner/outer learning rates, steps and meta-gradient mode.
        train_arch: meta-train only this architecture instead of sampling the space: a path
            to an architecture JSON file, ``reference`` for Conv-4 (the MAML baseline) or
            ``largest`` for the space's largest subnet (the "take the largest" baseline).
        eval_arch: architecture JSON that validation and test evaluate; by default the
            sampler's best (Conv-4 before any search).
        seed: seed of the per-task architecture sampling (offset by the DDP rank); ``None``:
            ``--seed_everything``'s (train.py), 0 when built directly.
        sampling: how a meta-batch's architectures are drawn from the space when no single
            architecture is trained: ``fair`` (the default: it ranked architectures best,
            RESULTS.md), ``uniform`` or ``sandwich`` (see ``lightning_metanas.samplers``); the
            search's share of draws from the space uses it too.
        tasks_per_arch: meta-training tasks that share one sampled architecture (consecutive
            tasks of a meta-batch); 1: an architecture per task. Tasks that share an
            architecture run as one vectorised batch where ``meta.vectorize`` is on (on CUDA by
            default), so a larger value speeds up a search's meta-training on a GPU, at the
            cost of fewer distinct architectures per step.
    """

    def __init__(
        self,
        ways: int = 5,
        image_channels: int = 1,
        image_size: int = 28,
        search_space: SearchSpace = SearchSpace(),
        meta: MetaConfig = MetaConfig(),
        train_arch: Optional[str] = None,
        eval_arch: Optional[str] = None,
        seed: Optional[int] = None,
        sampling: SamplingRule = "fair",
        tasks_per_arch: int = 1,
    ) -> None:
        super().__init__()
        search_space = _as_settings(SearchSpace, search_space)
        meta = _as_settings(MetaConfig, meta)
        if ways < 2:
            raise SettingsError(f"model.ways (data.ways) must be >= 2, got {ways}")
        if sampling not in SAMPLING_RULES:
            raise SettingsError(f"model.sampling must be one of {list(SAMPLING_RULES)}, got {sampling!r}")
        require_int("model.tasks_per_arch", tasks_per_arch, 1)
        self.save_hyperparameters(
            {
                "ways": ways,
                "image_channels": image_channels,
                "image_size": image_size,
                # lists, not tuples: hparams.yaml is then plain YAML (yaml.safe_load reads it)
                "search_space": {k: list(v) for k, v in dataclasses.asdict(search_space).items()},
                "meta": dataclasses.asdict(meta),
                "train_arch": train_arch,
                "eval_arch": eval_arch,
                "seed": 0 if seed is None else seed,
                "sampling": sampling,
                "tasks_per_arch": tasks_per_arch,
            }
        )
        self.space, self.meta, self.sampling = search_space, meta, sampling
        self.tasks_per_arch = tasks_per_arch
        # two images (BatchNorm needs more than one value per channel once a map is 1x1)
        self.example_input_array = torch.zeros(2, image_channels, image_size, image_size)
        self.supernet = SuperNet(search_space, ways, image_channels, task_norm=meta.norm_layer == "task_norm_i",
                                 last_norm=meta.last_norm)
        self.adapter = TaskAdapter.from_config(self.supernet, meta)
        self.sampler: ArchitectureSampler = self._initial_sampler(train_arch)
        self.eval_arch = self.load_architecture(eval_arch) if eval_arch else None
        # Validation and test measure the query accuracy under both normalisations from the same
        # adapted weights (one extra query pass): the run's own (``meta.norm``, which picks the
        # best checkpoint) as ``{split}/acc``, and each as ``{split}/acc_{norm}``, so every run
        # shows what classifying images one at a time costs.
        self.accuracy = torch.nn.ModuleDict({f"{split}_{norm}": TaskAccuracy() for split in ("val", "test") for norm in NORMS})
        self.last_result: dict[str, dict[str, float]] = {}  # split -> acc, acc_ci95, tasks, acc_{norm}, ...
        # What the last training step adapted, one per task: callbacks/guards.py names them
        # when that step's meta-loss or meta-gradient is not finite.
        self.last_step_archs: list[Architecture] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the evaluated architecture (batch statistics), before any adaptation: what
        Lightning's model summary counts FLOPs on, with ``example_input_array``."""
        return self.supernet(images, self.evaluated_architecture())

    # -- architectures -------------------------------------------------------------------
    def load_architecture(self, spec: str) -> Architecture:
        """``reference`` (Conv-4), ``largest`` (the space's largest subnet) or an architecture
        JSON file, checked against the space."""
        if spec == "reference":
            return self.space.reference()
        if spec == "largest":
            return self.supernet.largest_architecture()
        try:
            return self.space.validate(Architecture.load(spec))
        except ArchitectureError as err:
            message = str(err)
            raise ArchitectureError(message if message.startswith(str(spec)) else f"{spec}: {message}") from None

    def _initial_sampler(self, train_arch: Optional[str]) -> ArchitectureSampler:
        if train_arch:
            return FixedSampler(self.load_architecture(train_arch))
        return SpaceSampler(self.space, rule=self.sampling)

    def evaluated_architecture(self) -> Architecture:
        return self.eval_arch or self.sampler.best()

    def step_rng(self) -> random.Random:
        """Architecture sampling for this step, derived from (seed, rank, step) alone: each DDP
        rank draws its own architectures, and a resumed run draws what the uninterrupted run
        would have, with no generator state to checkpoint."""
        return seeding.rng(self.hparams.seed, self.global_rank, self.global_step)

    def step_architectures(self, tasks: int) -> list[Architecture]:
        """An architecture per task of this step: ``tasks_per_arch`` consecutive tasks share
        each of the sampler's draws for ``ceil(tasks / tasks_per_arch)`` tasks (``step_rng``)."""
        share = self.tasks_per_arch
        draws = self.sampler.sample_batch(self.step_rng(), -(-tasks // share))
        return [draws[t // share] for t in range(tasks)]

    # -- meta-training -------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """One meta-batch: the adapter computes every task's meta-gradient explicitly (each
        task's graph is freed when its gradient is taken; on CPU, tasks run on worker threads)
        and sums them (tasks that share an architecture vectorised, where that is on); the step
        returns a surrogate of the mean query loss whose value is that loss and whose gradient w.r.t. the SuperNet is the mean meta-gradient, so Lightning's
        one ``backward()`` per meta-batch (and DDP's gradient averaging in it) applies it."""
        batch_size = batch[0].shape[0]
        archs = self.last_step_archs = self.step_architectures(batch_size)
        result = self.adapter.meta_batch_gradient(
            archs,
            batch,
            steps=self.meta.inner_steps,
            mode=self.meta.meta_gradient,
        )
        loss = result.losses.mean()
        surrogate = sum(
            ((p * _standard_strides(g / batch_size)).sum() for p, g in result.grads.items()), loss.new_zeros(())
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/acc", result.accuracies.mean(), prog_bar=True, batch_size=batch_size)
        return surrogate - surrogate.detach() + loss

    # -- evaluation ----------------------------------------------------------------------
    def _evaluate_batch(self, batch, split: str) -> None:
        arch = self.evaluated_architecture()
        results = self.adapter.evaluate_tasks_norms(arch, batch, self.meta.eval_inner_steps, NORMS)
        for norm, result in results.items():
            self.accuracy[f"{split}_{norm}"].update(result.accuracy)

    def _log_accuracy(self, split: str) -> None:
        results = {}
        for norm in NORMS:
            metric = self.accuracy[f"{split}_{norm}"]
            results[norm] = metric.compute()  # already reduced over DDP ranks by the metric itself
            metric.reset()
        primary = results[self.adapter.norm]
        record = {name: float(value) for name, value in primary.items()} | {"norm": self.adapter.norm}
        self.log(f"{split}/acc", primary["acc"], prog_bar=True)
        self.log(f"{split}/acc_ci95", primary["acc_ci95"])
        for norm, result in results.items():
            record[f"acc_{norm}"], record[f"acc_{norm}_ci95"] = float(result["acc"]), float(result["acc_ci95"])
            self.log(f"{split}/acc_{norm}", result["acc"])
        self.last_result[split] = record

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate_batch(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate_batch(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.supernet.parameters(), lr=self.meta.meta_lr)

    # -- checkpoints ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # So that a checkpoint alone (eval.py, no search callback) evaluates what the run did.
        checkpoint["evaluated_arch"] = self.evaluated_architecture().to_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Evaluate the architecture these weights were saved with (e.g. testing the best
        # checkpoint after a search); a resumed search re-installs its population sampler at
        # train start, and a fixed training architecture stays fixed.
        if "evaluated_arch" in checkpoint and not isinstance(self.sampler, FixedSampler):
            self.sampler = SpaceSampler(
                self.space, best=Architecture.from_dict(checkpoint["evaluated_arch"]), rule=self.sampling
            )


def _standard_strides(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of a freshly made tensor of its shape: a gradient computed from
    channels-last maps has other strides (also where a dimension is 1, which ``contiguous``
    leaves), and DDP's gradient buckets warn about every such parameter."""
    fresh = t.new_empty(t.shape)
    return t if t.stride() == fresh.stride() else fresh.copy_(t)

