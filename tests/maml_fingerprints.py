"""Fingerprints of the inner loop's numbers: meta-gradients in every mode and evaluation
accuracies and losses under both normalisations, on every way the tasks can run (in the calling
thread, on worker threads, vectorised), on fixed seeds, in float32 as training runs.

``tests/data/maml_fingerprints.json`` holds them as recorded by the code before the inner loop
was restructured (issue 22), with the CPU model that recorded them; ``test_meta_gradients``
requires today's code to reproduce them: bit for bit on that CPU model, and to 1e-6 relative
elsewhere (float rounding depends on the CPU's vector instructions, not on the code).

    .venv/bin/python -m tests.maml_fingerprints --write    # record (only to re-baseline)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from lightning_metanas.latency import cpu_model, one_thread
from lightning_metanas.maml import TaskAdapter
from lightning_metanas.supernet import SuperNet
from tests.helpers import ARCHS, MODES, SPACE

PATH = Path(__file__).parent / "data" / "maml_fingerprints.json"
WAYS = {"calling_thread": dict(workers=1, vectorize=False), "threads": dict(workers=2, vectorize=False),
        "vectorized": dict(workers=1, vectorize=True, max_vectorized_tasks=2)}


def task_batch(tasks: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tasks, 5, 1, 14, 14, generator=g), torch.arange(5).repeat(tasks, 1),
            torch.randn(tasks, 10, 1, 14, 14, generator=g), torch.arange(5).repeat_interleave(2).repeat(tasks, 1))


def _stats(t: torch.Tensor) -> list[str]:
    """Sum, sum of squares and a fixed random projection, in float64, as exact strings."""
    t = t.detach().double().flatten()
    probe = torch.randn(t.numel(), generator=torch.Generator().manual_seed(t.numel()), dtype=torch.float64)
    return [repr(float(t.sum())), repr(float((t * t).sum())), repr(float(t @ probe))]


def fingerprints() -> dict:
    out = {}
    with one_thread():
        for way, kwargs in WAYS.items():
            torch.manual_seed(0)
            net = SuperNet(SPACE, ways=5)
            adapter = TaskAdapter(net, inner_lr=0.4, **kwargs)
            batch = task_batch()
            for mode in MODES:
                # two tasks per architecture, so the vectorised way stacks them
                archs = [ARCHS[0], ARCHS[0], ARCHS[1], ARCHS[2]]
                for steps in (1, 2):
                    result = adapter.meta_batch_gradient(archs, batch, steps=steps, mode=mode)
                    grads = torch.cat([g.flatten() for g in result.grads.values()])
                    out[f"{way}/{mode}/{steps}"] = {"grads": _stats(grads), "losses": _stats(result.losses),
                                                    "accuracies": _stats(result.accuracies)}
            for arch in ARCHS:
                for norm in ("transductive", "support"):
                    result = adapter.evaluate_tasks(arch, batch, 3, norm)
                    out[f"{way}/evaluate/{arch}/{norm}"] = {"losses": _stats(result.loss), "accuracies": _stats(result.accuracy)}
    return out


def main(argv: list[str]) -> int:
    if "--write" in argv:
        PATH.parent.mkdir(parents=True, exist_ok=True)
        PATH.write_text(json.dumps({"machine": cpu_model(), "torch": torch.__version__, "values": fingerprints()}, indent=1) + "\n")
        print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
