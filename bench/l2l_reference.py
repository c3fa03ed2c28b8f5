"""learn2learn's MAML over the SuperNet: the documented reference that the project's own inner
loop (``lightning_metanas.maml.TaskAdapter``) is tested against (tests/test_meta_gradients.py,
tests/test_supernet.py) and that ``bench/meta_step.py`` times. It clones every SuperNet
parameter per task and differentiates through all of them."""
from __future__ import annotations

import learn2learn as l2l
import torch
import torch.nn.functional as F

from lightning_metanas.search_space import Architecture
from lightning_metanas.supernet import SuperNet


def l2l_adapt(
    supernet: SuperNet, arch: Architecture, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
    create_graph: bool,
) -> l2l.algorithms.MAML:
    """learn2learn's ``clone()``/``adapt()``: a whole adapted SuperNet, usable as
    ``learner(x, arch)``. ``allow_unused``: a subnet leaves most SuperNet paths unused; their
    gradient is None, which learn2learn must skip rather than fail on."""
    learner = l2l.algorithms.MAML(supernet, lr=lr, allow_unused=True).clone()
    for _ in range(steps):
        learner.adapt(F.cross_entropy(learner(x, arch), y), first_order=not create_graph)
    return learner
