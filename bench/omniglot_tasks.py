"""Adaptation tasks drawn from unseen Omniglot characters, as the adaptation benches build them:
per task, characters of one split drawn with a generator seeded by ``(seed, key, task)``, and
per character some drawings to adapt on and some held out, all clean. What a bench does to
them afterwards (wrong labels, its own counts) is its own."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from lightning_metanas import seeding
from lightning_metanas.data import load_omniglot, omniglot_split
from lightning_metanas.data.images import LabelledImages

SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}


def omniglot_tasks(
    root: str, split_seed: int, split: str, count: int, shots: Sequence[int], held_out: int, seed: int, key: str,
    shuffle_shots: bool = False,
) -> Iterator[tuple[LabelledImages, LabelledImages]]:
    """``count`` tasks of ``len(shots)`` characters of ``split``, ``shots[i]`` drawings of the
    ``i``-th to adapt on (``shuffle_shots``: the counts shuffled per task, after the characters
    are drawn) and ``held_out`` of each to measure on: ``(train, held-out)`` image sets."""
    data = load_omniglot(root, image_size=28)
    ids = omniglot_split(split_seed, data.num_classes)[SPLIT_INDEX[split]]
    for t in range(count):
        rng = seeding.rng(seed, key, t)
        classes = rng.sample(ids, len(shots))
        counts = list(shots)
        if shuffle_shots:
            rng.shuffle(counts)
        train, val, tr_labels = [], [], []
        for label, (c, n) in enumerate(zip(classes, counts)):
            drawings = data.images[data.labels == c]
            order = rng.sample(range(len(drawings)), n + held_out)
            train.append(drawings[order[:n]])
            val.append(drawings[order[n:]])
            tr_labels += [label] * n
        names = [data.class_names[c] for c in classes]
        val_labels = torch.arange(len(classes)).repeat_interleave(held_out)
        yield (LabelledImages(torch.cat(train), torch.tensor(tr_labels), names),
               LabelledImages(torch.cat(val), val_labels, names))
