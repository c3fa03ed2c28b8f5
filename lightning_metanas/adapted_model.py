"""The adapted model as a product: one file a user saves, loads without the training
checkpoint, and runs on one image at a time.

After adaptation the architecture is a plain network (``standalone.StandaloneNet``) whose
BatchNorm layers (or TaskNorm-I's, for a network meta-trained with them) hold fixed statistics
(a last layer meta-trained with ``meta.last_norm=layer`` holds none: it normalises each image alone),
recorded over the task's own training images with the adapted weights: an image's prediction is then the same alone and in any batch (the meta-test's
transductive protocol, which normalises each query batch with its own statistics, would make it
depend on its batch-mates and cannot classify one image at all). The file also holds what a
new image must go through to look like the training images (size, channels, inversion,
per-channel normalisation) and the class names, in label order.

The file is ``torch.save`` of plain containers, tensors and strings, read back with
``torch.load(weights_only=True)``: nothing in it can run code, and a file that does not hold
exactly the keys and shapes of its architecture's network is refused in one line.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from lightning_metanas.checkpoints import CheckpointError, load_weights_only
from lightning_metanas.data.images import decode_image, pixels_to_float
from lightning_metanas.search_space import Architecture, ArchitectureError
from lightning_metanas.standalone import StandaloneNet

FORMAT = "lightning_metanas.adapted_model/1"


class ModelFileError(CheckpointError):
    """A saved model that cannot be used, with what is wrong."""


@dataclass
class Preprocessing:
    """How an image file becomes the network's input: decoded to ``channels`` (1 grayscale, 3
    RGB) at ``image_size`` x ``image_size``, ``1 - x`` if ``invert``, then ``(x - mean) / std``
    per channel (``None``: no normalisation)."""

    image_size: int
    channels: int
    invert: bool
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None

    def __call__(self, path: str | Path) -> torch.Tensor:
        """One image file as a float tensor ``[channels, image_size, image_size]``;
        ``DataError`` naming the file if it does not decode."""
        pixels = decode_image(path, str(path), self.image_size, self.channels, self.invert)
        return pixels_to_float(pixels[None], self.mean, self.std)[0]


@dataclass
class AdaptedModel:
    """A network adapted to one task, its classes and its input preprocessing."""

    net: StandaloneNet
    class_names: list[str]
    preprocessing: Preprocessing
    info: dict  # how it was made (checkpoint, settings, accuracies): shown, never needed to run

    @property
    def arch(self) -> Architecture:
        return self.net.arch

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Logits ``[N, classes]`` of preprocessed images ``[N, C, S, S]``, in batches of
        ``batch_size`` (the result does not depend on it: BatchNorm's statistics are fixed).
        On CPU the network runs in channels-last layout (one image: 0.38 ms against 0.72 ms
        for Conv-4 here, BENCHMARKS.md)."""
        self.net.eval()
        if images.device.type == "cpu":
            self.net.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        out = [self.net(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({
            "format": FORMAT,
            "arch": self.arch.to_dict(),
            "class_names": list(self.class_names),
            "preprocessing": asdict(self.preprocessing),
            "input": {"channels": self.net.in_channels, "image_size": self.net.image_size,
                      "task_norm": self.net.task_norm, "last_norm": self.net.last_norm},
            "info": self.info,
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
        }, path)
        return path

    @classmethod
    def load(cls, path: str | Path, flag: str = "--model") -> "AdaptedModel":
        """Read a saved model (``torch.load(weights_only=True)``); ``ModelFileError`` in one line
        for a file that is not one, lacks a key, or whose weights do not fit its architecture."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{flag} {path}: no such file")
        data = load_weights_only(path, flag)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFileError(f"{flag} {path} is not a model saved by adapt.py --save (no format {FORMAT!r})")
        missing = [k for k in ("arch", "class_names", "preprocessing", "input", "state_dict") if k not in data]
        if missing:
            raise ModelFileError(f"{flag} {path} lacks {', '.join(missing)}: save it again with adapt.py --save")
        try:
            arch = Architecture.from_dict(data["arch"])
            names = [str(n) for n in data["class_names"]]
            pre = Preprocessing(**data["preprocessing"])
            net = StandaloneNet(arch, int(data["input"]["channels"]), int(data["input"]["image_size"]), len(names),
                                task_norm=bool(data["input"].get("task_norm", False)),
                                last_norm=str(data["input"].get("last_norm", "task")))
        except (ArchitectureError, TypeError, KeyError, ValueError, NotImplementedError) as err:
            raise ModelFileError(f"{flag} {path}: unreadable model description ({err})") from None
        try:
            net.load_state_dict(data["state_dict"], strict=True)
        except (RuntimeError, TypeError, AttributeError) as err:
            detail = " ".join(str(err).split())[:300]
            raise ModelFileError(f"{flag} {path}: its weights do not fit {arch} with {len(names)} classes ({detail})") from None
        return cls(net.eval(), names, pre, dict(data.get("info") or {}))


def top_k(logits: torch.Tensor, class_names: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the ``k`` most probable classes and their softmax probabilities."""
    probs = torch.softmax(logits.double(), dim=-1)
    values, index = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(class_names[i], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), index.tolist())]
