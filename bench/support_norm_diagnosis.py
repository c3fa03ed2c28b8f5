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
  of each of ``--bank`` meta-training classes (statistics nearer the whole data set's);
* ``support, weights before the last step`` / ``before adaptation``: the support's, recorded
  under the inner loop's previous weights or the meta-weights (the adapted network has fitted
  its support images: are their statistics under the final weights biased?).

Also recorded: per layer, how the query batch's variance compares with the support images'
(median over channels, then over tasks).

Layers are those that take a task's statistics: a last layer meta-trained layer-normalised
(``meta.last_norm=layer``) takes none and is left out. For TaskNorm-I layers the statistics named are the task's moments that each image's own are
blended with, at the blend of the support's image count as in training (``transductive`` is the
library's own batch pass, at the batch's count). Accuracy is the mean over tasks with its 95%
interval.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model, git_commit, save  # noqa: E402
from lightning_metanas.checkpoints import data_settings, read_checkpoint  # noqa: E402
from lightning_metanas.data import EpisodicDataModule  # noqa: E402
from lightning_metanas.functional import record_statistics  # noqa: E402
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


class StatisticsFrom(NormStatistics):
    """Applies the pairs ``source`` recorded (another pass, e.g. under other weights)."""

    def __init__(self, source: NormStatistics) -> None:
        super().__init__()
        self.source = source

    def moments(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        layer = self._layer
        mean, var, n = super().moments(y)
        if self.recording:
            return mean, var, n
        return self.source.means[layer], self.source.variances[layer], n


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


def diagnose(model: MetaNASModule, data: EpisodicDataModule, bank: int) -> tuple[dict[str, dict], list[float]]:
    """Accuracy under every variant on ``data``'s validation tasks, and per layer the median over
    tasks of the median over channels of (the query batch's variance / the support images')."""
    adapter, arch = model.adapter, model.evaluated_architecture()
    names, _ = adapter.used(arch)
    supernet = adapter.threads.module()
    # the layers that take a task's statistics: all but a layer-normalised last one (meta.last_norm)
    layers = len(arch.ops) - (supernet.last_norm != "task")
    data.setup("validate")
    bank_images = adapter.in_memory_layout(meta_training_bank(data, bank)) if bank else None

    def call(params, images: torch.Tensor, norm: Optional[NormStatistics]) -> torch.Tensor:
        return functional_call(supernet, dict(zip(names, params)), (images, arch, norm), strict=False, tie_weights=False)

    def logits(params, x: torch.Tensor, stats_from: Optional[torch.Tensor], norm: Optional[NormStatistics]):
        if norm is None:
            return call(params, x, None)
        call(params, stats_from, norm.record())
        return call(params, x, norm.apply())

    def recorded(params, images: torch.Tensor) -> NormStatistics:
        return record_statistics(supernet, arch, names, params, images)

    # each variant: (the inner loop's path of weights, query images, support images) -> logits
    variants: dict[str, Callable] = {
        "transductive": lambda w, q, s: logits(w[-1], q, None, None),
        "support": lambda w, q, s: logits(w[-1], q, s, NormStatistics()),
    }
    for layer in range(layers):
        variants[f"query at layer {layer}"] = (lambda L: lambda w, q, s: logits(w[-1], q, s, QueryAtLayers({L})))(layer)
    for part in ("mean", "var"):
        variants[f"query {part} only at layer {layers - 1}"] = (
            lambda P: lambda w, q, s: logits(w[-1], q, s, QueryAtLayers({layers - 1}, P)))(part)
    variants["support + shifted views"] = lambda w, q, s: logits(w[-1], q, adapter.in_memory_layout(shifted_views(s)),
                                                                 NormStatistics())
    if bank_images is not None:
        variants[f"support + meta-training bank ({bank})"] = lambda w, q, s: logits(
            w[-1], q, torch.cat([s, bank_images]), NormStatistics())
    variants["support, weights before the last step"] = lambda w, q, s: logits(
        w[-1], q, s, StatisticsFrom(recorded(w[-2], s)))
    variants["support, weights before adaptation"] = lambda w, q, s: logits(
        w[-1], q, s, StatisticsFrom(recorded(w[0], s)))

    metrics = {name: TaskAccuracy() for name in variants}
    ratios: list[list[float]] = [[] for _ in range(layers)]
    for batch in data.val_dataloader():
        for sx, sy, qx, qy in zip(*batch):
            sx, qx = adapter.in_memory_layout(sx), adapter.in_memory_layout(qx)
            path = adapter.adapt(arch, itertools.repeat((sx, sy), model.meta.eval_inner_steps))
            with torch.no_grad():
                for name, run in variants.items():
                    metrics[name].update((run(path, qx, sx).argmax(-1) == qy).float().mean().reshape(1))
                own_support, own_query = recorded(path[-1], sx), recorded(path[-1], qx)
                for layer in range(layers):
                    ratio = own_query.variances[layer] / own_support.variances[layer].clamp_min(1e-12)
                    ratios[layer].append(float(ratio.median()))
    results = {name: {"acc": round(float(r["acc"]), 4), "ci95": round(float(r["acc_ci95"]), 4)}
               for name, r in ((name, m.compute()) for name, m in metrics.items())}
    return results, [round(statistics.median(r), 3) for r in ratios]


def table(records: list[dict]) -> str:
    """The records as a markdown table: validation accuracy (%) under each variant."""
    rows = ["| network (normalisation it was meta-trained with) | tasks | transductive | support (one image) "
            "| query statistics at one layer, support's elsewhere | last layer: query mean only / variance only "
            "| support + shifted views | support + meta-training bank "
            "| support under the weights before the last step / before adaptation "
            "| query / support variance, last layer |", "|" + " --- |" * 10]
    for r in records:
        res = r["results"]

        def pct(name: str) -> str:
            return f"{100 * res[name]['acc']:.2f}" if name in res else "—"

        layers = sorted(int(k.rsplit(" ", 1)[1]) for k in res if k.startswith("query at layer"))
        last = layers[-1]
        per_layer = ", ".join(f"{i}: {pct(f'query at layer {i}')}" for i in layers)
        bank = next((pct(k) for k in res if k.startswith("support + meta-training bank")), "—")
        trained = "TaskNorm-I, support" if r["norm_layer"] == "task_norm_i" else f"BatchNorm, {r['norm']}"
        if r.get("last_norm", "task") != "task":
            trained += f", last layer {r['last_norm']}-normalised"
        ratio = f"{r['variance_ratio'][-1]:.2f}" if r.get("variance_ratio") else "—"
        rows.append(f"| `{r['arch']}` ({trained}) | {r['tasks']} | {pct('transductive')} | **{pct('support')}** "
                    f"| {per_layer} | {pct(f'query mean only at layer {last}')} / {pct(f'query var only at layer {last}')} "
                    f"| {pct('support + shifted views')} | {bank} "
                    f"| {pct('support, weights before the last step')} / {pct('support, weights before adaptation')} "
                    f"| {ratio} |")
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
    results, variance_ratio = diagnose(model, data, args.bank)
    record = {"checkpoint": args.ckpt_path, "arch": str(model.evaluated_architecture()),
              "norm": model.adapter.norm, "norm_layer": model.meta.norm_layer, "last_norm": model.meta.last_norm,
              "tasks": args.tasks,
              "steps": model.meta.eval_inner_steps, "results": results, "variance_ratio": variance_ratio,
              "command": "python bench/support_norm_diagnosis.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "commit": git_commit(), "machine": cpu_model()}
    for name, r in results.items():
        print(f"{name:40s} {100 * r['acc']:6.2f} ± {100 * r['ci95']:.2f}")
    print("query / support variance by layer (medians):", variance_ratio)
    if args.out:
        existing = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else []
        save(Path(args.out), existing + [record])
    return 0


if __name__ == "__main__":
    sys.exit(main())
