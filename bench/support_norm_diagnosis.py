#!/usr/bin/env python
"""Where one-image inference loses its accuracy: a checkpoint's validation tasks, adapted once
each, then classified under variants of the statistics each normalisation layer uses.

    OMP_NUM_THREADS=1 .venv/bin/python bench/support_norm_diagnosis.py --ckpt_path RUN/checkpoints/epochNNN.ckpt \
        --out bench/results/support_norm_diagnosis.json
    .venv/bin/python bench/support_norm_diagnosis.py --table bench/results/support_norm_diagnosis.json

Variants (the same adapted weights for every one; validation split only, nothing chosen here
looks at test tasks):

* ``transductive``: every layer normalised with the query batch's statistics (MAML's protocol);
* ``support``: every layer with the adapted support images' (what a deployed model does);
* ``query at layer L``: the support's everywhere except layer ``L``, which takes the query
  batch's: how much of the gap that one layer's statistics carry (at the last layer also its
  mean alone and its variance alone);
* ``support + shifted views``: the support's, taken over the support images and four copies
  shifted by 2 pixels (a test-time augmentation);
* ``support + meta-training bank``: the support's, taken over the support images and one image
  of each of ``--bank`` meta-training classes (statistics nearer the whole data set's).

For TaskNorm-I layers the statistics named are the task's moments that each image's own are
blended with. Accuracy is the mean over tasks with its 95% interval.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model, git_commit, save  # noqa: E402
from lightning_metanas.checkpoints import data_settings, read_checkpoint  # noqa: E402
from lightning_metanas.data import EpisodicDataModule  # noqa: E402
from lightning_metanas.metrics import TaskAccuracy  # noqa: E402
from lightning_metanas.module import MetaNASModule  # noqa: E402
from lightning_metanas.ops import NormStatistics  # noqa: E402


class QueryAtLayers(NormStatistics):
    """Applies the recorded statistics except at ``layers``, where the batch's own mean and
    variance (or only one of them: ``part``) are used."""

    def __init__(self, layers: set[int], part: str = "both") -> None:
        super().__init__()
        self.layers, self.part = layers, part

    def moments(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        layer = self._layer
        mean, var, n = super().moments(y)
        if self.recording or layer not in self.layers:
            return mean, var, n
        own_var, own_mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
        return (own_mean if self.part != "var" else mean), (own_var if self.part != "mean" else var), n


def shifted_views(x: torch.Tensor, pixels: int = 2) -> torch.Tensor:
    """``x`` and four copies shifted by ``pixels`` (circularly: Omniglot's borders are blank)."""
    shifts = [(0, 0), (pixels, 0), (-pixels, 0), (0, pixels), (0, -pixels)]
    return torch.cat([torch.roll(x, shifts=s, dims=(-2, -1)) for s in shifts])


def meta_training_bank(data: EpisodicDataModule, size: int, seed: int = 0) -> torch.Tensor:
    """One image of each of ``size`` meta-training classes (seeded), as the tasks show them."""
    images, train = data.labelled_images(), data.class_splits()["train"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:size].tolist()
    first = [int((images.labels == train[i]).nonzero()[0]) for i in order]
    return torch.stack([torch.as_tensor(images.images[i]) for i in first]).float()


def diagnose(model: MetaNASModule, data: EpisodicDataModule, tasks: int, bank: int) -> dict[str, dict]:
    adapter, arch = model.adapter, model.evaluated_architecture()
    names, _ = adapter.used(arch)
    supernet = adapter.threads.module()
    layers = len(arch.ops)
    data.setup("validate")
    bank_images = adapter.in_memory_layout(meta_training_bank(data, bank)) if bank else None

    def logits(params, x: torch.Tensor, stats_from: Optional[torch.Tensor], norm: Optional[NormStatistics]):
        call = lambda images, n: functional_call(supernet, dict(zip(names, params)), (images, arch, n),  # noqa: E731
                                                 strict=False, tie_weights=False)
        if norm is None:
            return call(x, None)
        call(stats_from, norm.record())
        return call(x, norm.apply())

    variants: dict[str, Callable] = {
        "transductive": lambda p, q, s: logits(p, q, None, None),
        "support": lambda p, q, s: logits(p, q, s, NormStatistics()),
    }
    for layer in range(layers):
        variants[f"query at layer {layer}"] = (lambda L: lambda p, q, s: logits(p, q, s, QueryAtLayers({L})))(layer)
    for part in ("mean", "var"):
        variants[f"query {part} only at layer {layers - 1}"] = (
            lambda P: lambda p, q, s: logits(p, q, s, QueryAtLayers({layers - 1}, P)))(part)
    variants["support + shifted views"] = lambda p, q, s: logits(p, q, adapter.in_memory_layout(shifted_views(s)),
                                                                 NormStatistics())
    if bank_images is not None:
        variants[f"support + meta-training bank ({bank})"] = lambda p, q, s: logits(
            p, q, torch.cat([s, bank_images]), NormStatistics())

    metrics = {name: TaskAccuracy() for name in variants}
    seen = 0
    for batch in data.val_dataloader():
        for sx, sy, qx, qy in zip(*batch):
            if seen == tasks:
                break
            sx, qx = adapter.in_memory_layout(sx), adapter.in_memory_layout(qx)
            params = adapter.adapt(arch, itertools.repeat((sx, sy), model.meta.eval_inner_steps))[-1]
            with torch.no_grad():
                for name, run in variants.items():
                    metrics[name].update((run(params, qx, sx).argmax(-1) == qy).float().mean().reshape(1))
            seen += 1
    return {name: {"acc": round(float(r["acc"]), 4), "ci95": round(float(r["acc_ci95"]), 4)}
            for name, r in ((name, m.compute()) for name, m in metrics.items())}


def table(records: list[dict]) -> str:
    """The records as a markdown table: validation accuracy (%) under each variant."""
    rows = ["| network (normalisation it was meta-trained with) | tasks | transductive | support (one image) "
            "| query statistics at one layer, support's elsewhere | last layer: query mean only / variance only "
            "| support + shifted views | support + meta-training bank |", "|" + " --- |" * 8]
    for r in records:
        res, pct = r["results"], lambda name: f"{100 * r['results'][name]['acc']:.2f}"
        layers = sorted(int(k.rsplit(" ", 1)[1]) for k in res if k.startswith("query at layer"))
        last = layers[-1]
        per_layer = ", ".join(f"{i}: {pct(f'query at layer {i}')}" for i in layers)
        bank = next((pct(k) for k in res if k.startswith("support + meta-training bank")), "—")
        trained = "TaskNorm-I, support" if r["norm_layer"] == "task_norm_i" else f"BatchNorm, {r['norm']}"
        rows.append(f"| `{r['arch']}` ({trained}) | {r['tasks']} | {pct('transductive')} | **{pct('support')}** "
                    f"| {per_layer} | {pct(f'query mean only at layer {last}')} / {pct(f'query var only at layer {last}')} "
                    f"| {pct('support + shifted views')} | {bank} |")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", metavar="JSON", help="print the records of this file as a table and stop")
    parser.add_argument("--ckpt_path")
    parser.add_argument("--tasks", type=int, default=600, help="validation tasks")
    parser.add_argument("--bank", type=int, default=75, help="meta-training images in the bank variant (0: none)")
    parser.add_argument("--out", default=None, help="append the record to this JSON list")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    if not args.ckpt_path:
        parser.error("--ckpt_path is required (or --table JSON)")
    torch.manual_seed(0)
    checkpoint = read_checkpoint(args.ckpt_path)
    settings = data_settings(checkpoint)
    settings["val_tasks"] = args.tasks
    data = EpisodicDataModule(**settings)
    model = MetaNASModule.load_from_checkpoint(args.ckpt_path, map_location="cpu", weights_only=True)
    results = diagnose(model, data, args.tasks, args.bank)
    record = {"checkpoint": args.ckpt_path, "arch": str(model.evaluated_architecture()),
              "norm": model.adapter.norm, "norm_layer": model.meta.norm_layer, "tasks": args.tasks,
              "steps": model.meta.eval_inner_steps, "results": results,
              "command": "python bench/support_norm_diagnosis.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "commit": git_commit(), "machine": cpu_model()}
    for name, r in results.items():
        print(f"{name:40s} {100 * r['acc']:6.2f} ± {100 * r['ci95']:.2f}")
    if args.out:
        existing = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else []
        save(Path(args.out), existing + [record])
    return 0


if __name__ == "__main__":
    sys.exit(main())
