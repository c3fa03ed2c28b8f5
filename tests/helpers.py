"""What several test files share: small image folders drawn on the fly (no data is downloaded)."""
import random
from pathlib import Path

from PIL import Image, ImageDraw

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
