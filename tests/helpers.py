"""What several test files share: small image folders drawn on the fly (no data is downloaded),
a small SuperNet with fixed tasks for the inner loop's tests, and a set-up search callback."""
import io
import random
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image, ImageDraw

from lightning_metanas.search_space import Architecture, SearchSpace
from lightning_metanas.supernet import SuperNet

SHAPES = ("disc", "frame", "hbars", "vbars")


def draw(kind: str, rng: random.Random, size: int = 28) -> Image.Image:
    """A white shape on black (ink = 1, like the synthetic meta-training data), jittered in
    position and size: four classes a small conv net tells apart from a few examples."""
    img = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(img)
    cx, cy, r = size // 2 + rng.randint(-3, 3), size // 2 + rng.randint(-3, 3), rng.randint(6, 9)
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "disc":
        pen.ellipse(box, fill=255)
    elif kind == "frame":
        pen.rectangle(box, outline=255, width=2)
    elif kind == "hbars":
        for y in range(box[1], box[3], 4):
            pen.line([box[0], y, box[2], y], fill=255, width=2)
    else:
        for x in range(box[0], box[2], 4):
            pen.line([x, box[1], x, box[3]], fill=255, width=2)
    return img


def write_shapes(root: Path, per_class: int = 8, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for kind in SHAPES:
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            draw(kind, rng).save(root / kind / f"{i:02d}.png")
    return root


SPACE = SearchSpace(widths=(8, 16), depths=(2, 3))
ARCHS = [
    Architecture(("conv3x3", "sep_conv3x3", "max_pool3x3"), (16, 8, 16)),
    Architecture(("conv5x5", "dil_conv3x3"), (8, 16)),
    # skip 16 -> 16 is the identity: its projection is in parameters_of but never read
    Architecture(("conv3x3", "skip", "avg_pool3x3"), (16, 16, 8)),
]
MODES = ("first_order", "second_order", "finite_difference")


def small_supernet(dtype=torch.float32, seed=0, task_norm=False, last_norm="task"):
    """``task_norm``: TaskNorm-I layers, their blends set away from (0, 0) (one half, where a
    mistake that swaps the task's and the image's statistics would not show). ``last_norm``:
    as ``SuperNet``'s."""
    torch.manual_seed(seed)
    net = SuperNet(SPACE, ways=5, in_channels=1, task_norm=task_norm, last_norm=last_norm).to(dtype)
    with torch.no_grad():
        for i, p in enumerate(p for n, p in net.named_parameters() if n.endswith("norm_blend")):
            p.copy_(torch.tensor([0.1 * (i % 3), 0.3 - 0.2 * (i % 2)]))
    return net


def one_task(seed=0, ways=5, shots=1, queries=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(ways * shots, 1, 14, 14, generator=g, dtype=dtype)
    xq = torch.randn(ways * queries, 1, 14, 14, generator=g, dtype=dtype)
    return (xs, torch.arange(ways).repeat(shots)), (xq, torch.arange(ways).repeat(queries))


def flat(grads):
    return torch.cat([g.flatten() for g in grads if g is not None])


def task_batch(tasks=3, seed=0):
    pairs = [one_task(seed=seed + t, queries=2) for t in range(tasks)]
    return tuple(
        torch.stack([part for part in column])
        for column in zip(*[(s[0], s[1], q[0], q[1]) for s, q in pairs])
    )



# tasks grouped by architecture, not contiguously: stacks are gathered and scattered back
GROUPED = [ARCHS[0], ARCHS[1], ARCHS[0], ARCHS[2], ARCHS[1], ARCHS[0]]


def as_double(batch):
    return tuple(t.double() if t.is_floating_point() else t for t in batch)


def omniglot_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.random((105, 105)) > 0.2  # mostly white paper (True), some black ink
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def make_fake_omniglot(root: Path, drawings: dict[str, int] | None = None, characters: int = 4) -> Path:
    """Two small zips in the real layout: 2 alphabets x ``characters`` each, 4 drawings each.

    ``drawings`` overrides the count for a character path like ``images_background/A0/c1``.
    """
    root.mkdir(parents=True, exist_ok=True)
    drawings = drawings or {}
    seed = 0
    for top in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(root / f"{top}.zip", "w") as archive:
            for a in range(2):
                for c in range(characters):
                    folder = f"{top}/A{a}/c{c}"
                    for d in range(drawings.get(folder, 4)):
                        seed += 1
                        archive.writestr(f"{folder}/{seed:04d}_{d + 1:02d}.png", omniglot_png(seed))
    return root


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b)
    )


def synthetic_data(**kwargs):
    """Synthetic 3-way tasks of 14x14 images, set up: 6 validation tasks."""
    from lightning_metanas.data import EpisodicDataModule

    data = EpisodicDataModule(dataset="synthetic", image_size=14, ways=3, queries=2, val_tasks=6, **kwargs)
    data.setup("fit")
    return data


def scoring_callback(space=None, **search):
    """A tiny module (``space``: default 2 layers of conv3x3 or skip at 8 channels), a stand-in
    trainer at step 5 and a set-up search callback (``search``: ``SearchConfig`` fields), for scoring."""
    from callbacks.evolution import EvolutionCallback
    from lightning_metanas.module import MetaNASModule
    from lightning_metanas.search_config import SearchConfig

    space = space or SearchSpace(ops=("conv3x3", "skip"), widths=(8,), depths=(2,))
    module = MetaNASModule(ways=3, image_size=14, search_space=space)
    trainer = SimpleNamespace(datamodule=synthetic_data(), global_step=5, global_rank=0, world_size=1,
                              is_global_zero=True, progress_bar_callback=None, max_epochs=4, fast_dev_run=False)
    callback = EvolutionCallback(SearchConfig(**{"tasks_per_score": 3, "population_size": 2, "tournament_size": 2} | search))
    callback.setup(trainer, module, "fit")
    return callback, trainer, module
