"""How the SuperNet's weights are meta-learned: the settings ``--model.meta.*``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from lightning_metanas.errors import SettingsError, require_int, require_positive

MetaGradient = Literal["first_order", "second_order", "finite_difference"]
META_GRADIENTS: tuple[str, ...] = ("first_order", "second_order", "finite_difference")
Norm = Literal["transductive", "support"]
NORMS: tuple[str, ...] = ("transductive", "support")
NormLayer = Literal["batch", "task_norm_i"]
NORM_LAYERS: tuple[str, ...] = ("batch", "task_norm_i")
LastNorm = Literal["task", "layer"]
LAST_NORMS: tuple[str, ...] = ("task", "layer")


@dataclass
class MetaConfig:
    """How the SuperNet's weights are meta-learned.

    Args:
        inner_lr: SGD step size of the per-task adaptation.
        inner_steps: adaptation steps per task during meta-training.
        eval_inner_steps: adaptation steps per task at validation and meta-test.
        meta_lr: Adam learning rate of the outer (meta) update.
        meta_gradient: ``first_order`` (FOMAML), ``second_order`` (exact MAML gradient
            through the inner steps) or ``finite_difference`` (close to ``second_order``, at
            the memory of ``first_order``; see ``maml.py``'s docstring).
        fd_epsilon: distance the parameters move along ``v`` for a finite difference. Smaller
            crosses fewer ReLU/max-pool kinks but loses float precision (BENCHMARKS.md).
        vectorize: run the tasks that share an architecture as one vectorised batch
            (``torch.func.vmap`` over tasks); ``None``: on CUDA yes, on CPU no (worker threads
            measured faster there, BENCHMARKS.md). Training tasks share architectures when
            ``model.tasks_per_arch`` > 1 or the architecture is fixed.
        max_vectorized_tasks: at most this many tasks in one vectorised batch; larger groups
            run in chunks (bounds memory: activations grow with tasks x images).
        channels_last: images in channels-last memory layout; ``None``: on CPU yes (measured
            faster), on CUDA no (``bench/device_check.sh`` measures both).
        workers: CPU threads a meta-batch's tasks are spread over, a task at a time per thread
            (``None``: torch's intra-op thread count; 1: every task in the calling thread).
        norm: the BatchNorm statistics a query image is normalised with, in meta-training and
            evaluation: ``transductive`` (the query batch's own, MAML's protocol: a prediction
            depends on the rest of the batch) or ``support`` (the adapted task's support
            images', so each query image is classified alone, as a deployed model is; the
            support passes of the inner loop are the same in both).
        norm_layer: how a layer normalises with those statistics: ``batch`` (BatchNorm: with
            them alone) or ``task_norm_i`` (TaskNorm-I, Bronskill et al. 2020: blended with
            each image's own statistics, the blend learned per layer, in every pass including
            the inner loop's; ``ops.blend_normalize``). Meant with ``norm=support``, where the
            five support images of a 5-way 1-shot task make noisy statistics. Saved, predicted
            and exported like a BatchNorm network (``standalone.StandaloneTaskNorm``).
        last_norm: how the last layer (before the head) normalises: ``task`` (as every other
            layer, with ``norm``'s statistics) or ``layer`` (each image over its own channels and
            space, GroupNorm with one group: no task statistics). Why: one image at a time loses its accuracy at the last layer, whose
            maps are 1x1 in 5-layer networks, so a 5-way 1-shot support set gives 5 values per
            channel (RESULTS.md, "Where the gap sits"); a last layer that needs no task
            statistics cannot lose there. (Without any normalisation there, a Conv-4's 5-way
            query loss at initialisation was ~150 against ~6: the inner loop's step diverges.)
    """

    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int = 3
    meta_lr: float = 0.003
    meta_gradient: MetaGradient = "first_order"
    fd_epsilon: float = 1e-5
    vectorize: Optional[bool] = None
    max_vectorized_tasks: int = 64
    channels_last: Optional[bool] = None
    workers: Optional[int] = None
    norm: Norm = "transductive"
    norm_layer: NormLayer = "batch"
    last_norm: LastNorm = "task"

    def __post_init__(self) -> None:
        for name in ("inner_lr", "meta_lr", "fd_epsilon"):
            require_positive(f"model.meta.{name}", getattr(self, name))
        for name in ("inner_steps", "eval_inner_steps"):
            require_int(f"model.meta.{name}", getattr(self, name))
        require_int("model.meta.max_vectorized_tasks", self.max_vectorized_tasks, 1)
        if self.workers is not None:
            require_int("model.meta.workers", self.workers, 1)
        for name in ("vectorize", "channels_last"):
            if getattr(self, name) not in (None, True, False):
                raise SettingsError(f"model.meta.{name} must be true, false or null, got {getattr(self, name)!r}")
        if self.meta_gradient not in META_GRADIENTS:
            raise SettingsError(
                f"model.meta.meta_gradient must be one of {list(META_GRADIENTS)}, got {self.meta_gradient!r}"
            )
        if self.norm not in NORMS:
            raise SettingsError(f"model.meta.norm must be one of {list(NORMS)}, got {self.norm!r}")
        if self.norm_layer not in NORM_LAYERS:
            raise SettingsError(f"model.meta.norm_layer must be one of {list(NORM_LAYERS)}, got {self.norm_layer!r}")
        if self.last_norm not in LAST_NORMS:
            raise SettingsError(f"model.meta.last_norm must be one of {list(LAST_NORMS)}, got {self.last_norm!r}")
