"""The registry of candidate operations, with weights shared across channel widths.

Every operation holds its weights at the widest setting and slices the first ``c_in`` input
and ``c_out`` output channels when a narrower subnet runs (elastic width, as in
once-for-all), so one tensor trains every width. Each op ends in its own BatchNorm, which by
default normalises with the statistics of the current batch, i.e. of the task at hand: this is
the MAML reference protocol (Finn et al. keep ``training=True`` at meta-test too) and it
keeps no running statistics, so learn2learn's ``clone()`` has no shared buffers to corrupt.

A batch's statistics make a prediction depend on the rest of the batch, and one image alone
cannot be normalised at all; a deployed classifier sees one image at a time. ``NormStatistics``
therefore lets a forward pass *record* each layer's statistics (of a task's support images)
and a later pass *apply* them, so that every image is normalised by the same numbers whatever
else is in its batch (inductive inference).

With so few support images (five at 5-way 1-shot) their statistics are noisy, and a network
meta-trained on a batch's statistics loses accuracy when it meets them. TaskNorm-I (Bronskill
et al. 2020) blends them with each image's own (instance) statistics, ``alpha`` of the task's
and ``1 - alpha`` of the image's, ``alpha = sigmoid(a * n + b)`` learned per layer from the
number ``n`` of images the task's statistics came from. An op built with ``task_norm=True``
does this in every pass (``blend_normalize``): its parameters ``norm_blend = (a, b)``.

A layer can also normalise without any task statistics (``own_normalize``): ``layer``, each
image over its own channels and space. The SuperNet uses that for the last layer when
``meta.last_norm`` says so; such a layer records nothing in a ``NormStatistics``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


BN_EPS = 1e-5  # F.batch_norm's default, also the standalone network's


class NormStatistics:
    """Per-layer BatchNorm statistics passed through one forward pass.

    ``record()``: the pass normalises with its batch's statistics, as without this object, and
    appends each layer's per-channel mean and (biased, the one batch norm divides by) variance.
    ``apply()``: the pass normalises layer ``i`` with the ``i``-th recorded pair instead, so
    every image is treated alone. Applying to the recorded images reproduces the recording
    pass's output (to float rounding: one scale and shift per channel, as an exported network's
    folded BatchNorm computes it). The statistics keep their graph: a query loss under ``apply`` differentiates
    through the support images that made them (TaskNorm-I's way, Bronskill et al. 2020).
    """

    def __init__(self) -> None:
        self.means: list[torch.Tensor] = []
        self.variances: list[torch.Tensor] = []
        self.counts: list[int] = []  # images each pair was taken over (TaskNorm-I's ``n``)
        self.recording = True
        self._layer = 0

    def record(self) -> "NormStatistics":
        self.means, self.variances, self.counts, self.recording = [], [], [], True
        return self

    def apply(self) -> "NormStatistics":
        if not self.means:
            raise RuntimeError("NormStatistics.apply() before any statistics were recorded")
        self.recording, self._layer = False, 0
        return self

    def moments(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This layer's task statistics ``(mean, variance, n)``: ``y``'s own batch's (and kept)
        when recording, else the next recorded ones."""
        if self.recording:
            var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
            self.keep(mean, var, y.shape[0])
            return mean, var, y.shape[0]
        i, self._layer = self._layer, self._layer + 1
        if i >= len(self.means):
            raise RuntimeError(f"NormStatistics holds {len(self.means)} layers; the pass has more")
        return self.means[i], self.variances[i], self.counts[i]

    def keep(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        """Record one layer's task statistics, taken over ``n`` images."""
        self.means.append(mean)
        self.variances.append(var)
        self.counts.append(n)

    def normalize(self, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        mean, var, _ = self.moments(y)
        if self.recording:
            return F.batch_norm(y, None, None, weight, bias, training=True, eps=BN_EPS)
        # by hand: F.batch_norm refuses running statistics that carry a graph
        scale = weight * torch.rsqrt(var + BN_EPS)
        shift = bias - mean * scale
        return y * scale[:, None, None] + shift[:, None, None]


OWN_NORMS = ("layer",)


def own_normalize(y: torch.Tensor, kind: str, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``y`` normalised with nothing but itself, image by image: ``layer`` (layer normalisation
    over channels and space, GroupNorm with one group, then the per-channel scale and shift)."""
    if kind == "layer":
        return F.group_norm(y, 1, weight, bias, BN_EPS)
    raise ValueError(f"own normalisation must be one of {list(OWN_NORMS)}, got {kind!r}")


def blend_weight(blend: torch.Tensor, n: int) -> torch.Tensor:
    """TaskNorm-I's ``alpha = sigmoid(a * n + b)``: how much of the task's statistics (taken
    over ``n`` images) an image is normalised with, the rest being its own."""
    return torch.sigmoid(blend[0] * n + blend[1])


def blend_normalize(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, alpha: torch.Tensor,
                    weight: torch.Tensor, bias: torch.Tensor,
                    instance: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """TaskNorm-I: each image of ``y`` normalised with the mixture of the task's moments
    (``mean``, ``var`` per channel) and its own over space, ``alpha`` of the task's (the moments
    of the two-component mixture, as Bronskill et al. pool them). An image's output depends on
    the task's statistics and itself only, never on the rest of its batch. Biased variances
    throughout: a one-pixel map has instance variance 0, not NaN. ``instance``: ``y``'s
    ``(variance, mean)`` over space, keepdim, if already computed."""
    var_i, mean_i = instance if instance is not None else instance_moments(y)
    mean_t, var_t = mean[:, None, None], var[:, None, None]
    pooled = alpha * mean_t + (1 - alpha) * mean_i
    pooled_var = alpha * (var_t + (mean_t - pooled) ** 2) + (1 - alpha) * (var_i + (mean_i - pooled) ** 2)
    scale = weight[:, None, None] * torch.rsqrt(pooled_var + BN_EPS)  # per image and channel: cheap
    return torch.addcmul(bias[:, None, None] - pooled * scale, y, scale)  # one pass over the maps


def instance_moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's per-channel (biased) ``(variance, mean)`` over space, keepdim, as
    ``E[y^2] - E[y]^2``: on channels-last maps ``torch.var_mean`` over (H, W) ran ~6x slower than
    the two means (38 vs 6 ms on 75 x 64 x 28 x 28, one thread), and this sits in every pass."""
    mean = y.mean(dim=(2, 3), keepdim=True)
    return (y.square().mean(dim=(2, 3), keepdim=True) - mean.square()).clamp_min(0), mean


def batch_moments(instance: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's per-channel (biased) ``(mean, variance)`` from its images' ``(variance, mean)``
    over space (equal-sized images): the law of total variance, with no second pass over the maps."""
    var_i, mean_i = instance
    mean = mean_i.mean(dim=0)
    var = (var_i + mean_i.square()).mean(dim=0) - mean.square()
    return mean.reshape(-1), var.clamp_min(0).reshape(-1)


class SharedOp(nn.Module):
    """Base class: ``forward(x, c_out)`` maps ``x`` (with any ``c_in <= max_in`` channels) to
    ``c_out <= max_out`` channels, normalised by per-task batch statistics (or by the
    statistics ``norm`` carries)."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__()
        self.max_in, self.max_out = max_in, max_out
        self.bn_weight = nn.Parameter(torch.ones(max_out))
        self.bn_bias = nn.Parameter(torch.zeros(max_out))
        self.norm_blend: Optional[nn.Parameter] = None  # TaskNorm-I's (a, b), see use_task_norm

    def use_task_norm(self) -> None:
        """Normalise as TaskNorm-I from now on: ``(a, b) = (0, 0)``, i.e. half the task's
        statistics and half the image's, as Bronskill et al. initialise it."""
        self.norm_blend = nn.Parameter(torch.zeros(2, device=self.bn_weight.device))

    def transform(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, c_out: int, norm: Optional[NormStatistics] = None,
                own: Optional[str] = None) -> torch.Tensor:
        """``own``: normalise with the image's own statistics alone (``own_normalize``), not the
        task's; ``norm`` then records and applies nothing for this layer."""
        y = self.transform(x, c_out)
        if own is not None:
            return own_normalize(y, own, self.bn_weight[:c_out], self.bn_bias[:c_out])
        if self.norm_blend is not None:
            instance = instance_moments(y)
            if norm is None or norm.recording:
                (mean, var), n = batch_moments(instance), y.shape[0]
                if norm is not None:
                    norm.keep(mean, var, n)
            else:
                mean, var, n = norm.moments(y)
            alpha = blend_weight(self.norm_blend, n)
            return blend_normalize(y, mean, var, alpha, self.bn_weight[:c_out], self.bn_bias[:c_out], instance)
        if norm is not None:
            return norm.normalize(y, self.bn_weight[:c_out], self.bn_bias[:c_out])
        return F.batch_norm(
            y, None, None, self.bn_weight[:c_out], self.bn_bias[:c_out], training=True
        )

    def flops(self, c_in: int, c_out: int, h: int, w: int) -> int:
        """Multiply-accumulates of the op at one sample of the given output size."""
        return 0


def _conv_weight(c_out: int, c_in: int, k: int) -> nn.Parameter:
    weight = torch.empty(c_out, c_in, k, k)
    nn.init.xavier_uniform_(weight)  # learn2learn's maml_init_ for conv blocks
    return nn.Parameter(weight)


class Conv(SharedOp):
    def __init__(self, max_in: int, max_out: int, kernel: int, dilation: int = 1) -> None:
        super().__init__(max_in, max_out)
        self.kernel, self.dilation = kernel, dilation
        self.weight = _conv_weight(max_out, max_in, kernel)

    def transform(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        c_in = x.shape[1]
        pad = self.dilation * (self.kernel - 1) // 2
        return F.conv2d(x, self.weight[:c_out, :c_in], padding=pad, dilation=self.dilation)

    def flops(self, c_in: int, c_out: int, h: int, w: int) -> int:
        return c_in * c_out * self.kernel**2 * h * w


class SepConv(SharedOp):
    """Depthwise 3x3 then pointwise 1x1: most of a 3x3 conv's reach at a ninth of its cost."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__(max_in, max_out)
        self.depthwise = _conv_weight(max_in, 1, 3)
        self.pointwise = _conv_weight(max_out, max_in, 1)

    def transform(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        c_in = x.shape[1]
        x = F.conv2d(x, self.depthwise[:c_in], padding=1, groups=c_in)
        return F.conv2d(x, self.pointwise[:c_out, :c_in])

    def flops(self, c_in: int, c_out: int, h: int, w: int) -> int:
        return (9 * c_in + c_in * c_out) * h * w


class Pool(SharedOp):
    """3x3 pooling (stride 1); a 1x1 projection changes the channel count when it must."""

    def __init__(self, max_in: int, max_out: int, kind: str) -> None:
        super().__init__(max_in, max_out)
        self.kind = kind
        self.projection = _conv_weight(max_out, max_in, 1)

    def transform(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        if self.kind == "max":
            x = F.max_pool2d(x, 3, stride=1, padding=1)
        elif self.kind == "avg":
            x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        c_in = x.shape[1]
        if c_in == c_out:
            return x
        return F.conv2d(x, self.projection[:c_out, :c_in])

    def flops(self, c_in: int, c_out: int, h: int, w: int) -> int:
        return 0 if c_in == c_out else c_in * c_out * h * w


OPERATIONS: dict[str, Callable[[int, int], SharedOp]] = {
    "conv3x3": lambda i, o: Conv(i, o, 3),
    "conv5x5": lambda i, o: Conv(i, o, 5),
    "sep_conv3x3": lambda i, o: SepConv(i, o),
    "dil_conv3x3": lambda i, o: Conv(i, o, 3, dilation=2),
    "max_pool3x3": lambda i, o: Pool(i, o, "max"),
    "avg_pool3x3": lambda i, o: Pool(i, o, "avg"),
    "skip": lambda i, o: Pool(i, o, "none"),
}
"""Name -> constructor ``(max_in, max_out) -> SharedOp``. A new operation is one entry here."""


def downsample(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling after every layer, as in Conv-4, until the map is one pixel wide."""
    if min(x.shape[-2:]) < 2:
        return x
    return F.max_pool2d(x, 2)


def pooled_size(size: int) -> int:
    return size if size < 2 else math.floor(size / 2)
