"""Choosing ``--drop_suspects auto`` on validation classes: at what share of suspect images does
adapting again without them start to pay?

    .venv/bin/python bench/robust_adapt_auto.py     # -> bench/robust_adapt/auto_val.json

Dropping the suspects helps when labels are wrong and costs a little when they are not
(``bench/robust_adapt/omniglot_val.json``: the good images a clean task loses). The ``prototype``
suspects are known before any fine-tuning, so their share in a task can decide. This bench
recomputes, for every task of the validation file (same networks, settings, seeds and tasks as
``bench/robust_adapt.py --split val``), the suspects listed at the default threshold, and reads
that file's per-task accuracy of ``balanced`` (adapt.py's default, nothing dropped) and
``balanced_drop`` (the same, suspects dropped): a rule "drop when at least a share ``s`` of the
images is listed" gives, per task, one of the two, so its accuracy is known for every ``s``
without adapting again. Tasks where nothing is listed must have equal figures in both modes:
checked, as the proof that the tasks line up.

The share is chosen by a rule fixed before looking: the largest mean accuracy over the twelve
(network, setting) cells, among the shares that cost no clean or imbalanced cell more than 0.25
points against the default (``MAX_CLEAN_COST``). Test classes are not read.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.adapt_omniglot import mean_ci  # noqa: E402
from bench.common import cpu_model, git_commit, load, save  # noqa: E402
from bench.omniglot_tasks import omniglot_tasks  # noqa: E402
from bench.robust_adapt import KEY, QUERIES, SETTINGS, mode_rule, noisy  # noqa: E402
from lightning_metanas import seeding  # noqa: E402
from lightning_metanas.adaptation import suspect_scores, task_network  # noqa: E402
from lightning_metanas.checkpoints import data_settings, read_checkpoint  # noqa: E402
from lightning_metanas.data.images import LabelledImages  # noqa: E402
from lightning_metanas.maml import TaskAdapter  # noqa: E402
from lightning_metanas.module import MetaNASModule  # noqa: E402
from lightning_metanas.suspects import flagged  # noqa: E402

VAL = ROOT / "bench/robust_adapt/omniglot_val.json"
OUT = ROOT / "bench/robust_adapt/auto_val.json"
SHARES = (0.0, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 1.01)  # 1.01: never
MAX_CLEAN_COST = 0.0025
NOISY = ("noise20", "noise40")


def listed_per_task(path: str, setting: str, tasks: int, seed: int, root: str) -> list[tuple[int, int]]:
    """(suspects listed, images) of each validation task, listed as the ``balanced_drop`` cells
    it composes were: the one-layer score at 0.24 (the default when the share was chosen)."""
    model = MetaNASModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    split_seed = int((data_settings(read_checkpoint(path)) or {}).get("split_seed", 0))
    arch, rule = model.evaluated_architecture(), mode_rule("default_layers1")
    spec = SETTINGS[setting]
    out = []
    for t, (train, _) in enumerate(omniglot_tasks(root, split_seed, "val", tasks, spec.shots, QUERIES, seed, KEY,
                                                  shuffle_shots=spec.imbalanced)):
        labels, _ = noisy(train.labels, spec.noise, seeding.rng(seed, KEY, t, "noise"))
        train = LabelledImages(train.images, labels, train.class_names)
        net, _ = task_network(model.supernet, train.num_classes, seed=t)
        scores = suspect_scores(net, TaskAdapter.from_config(net, model.meta), arch, train, rule.layers)
        out.append((len(flagged(scores[rule.score], labels, rule.threshold)), len(labels)))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/omniglot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cells = {(e["arch"], e["setting"], e["mode"]): e for e in load(VAL) if e["tasks"] == 100}
    nets = sorted({(e["arch"], e["checkpoint"]) for e in cells.values()})
    rows = []
    for arch, path in nets:
        for setting in SETTINGS:
            keep, drop = cells[(arch, setting, "balanced")], cells[(arch, setting, "balanced_drop")]
            listed = listed_per_task(path, setting, keep["tasks"], args.seed, args.root)
            a, b = keep["per_task"]["acc"], drop["per_task"]["acc"]
            mismatched = sum(1 for (n, _), x, y in zip(listed, a, b) if n == 0 and x != y)
            if mismatched:
                raise SystemExit(f"{arch} {setting}: {mismatched} tasks list no suspect yet differ between modes: "
                                 "the tasks do not line up with the validation file")
            rows.append({"arch": arch, "setting": setting, "listed": [n for n, _ in listed],
                         "images": [m for _, m in listed], "acc_default": a, "acc_drop": b})
            share = [n / m for n, m in listed]
            print(f"{arch[:40]:40s} {setting:22s} listed/task {statistics.mean(n for n, _ in listed):5.2f} "
                  f"share median {statistics.median(share):.3f} max {max(share):.3f}", flush=True)
    table = []
    for s in SHARES:
        per_cell = []
        for r in rows:
            auto = [y if n / m >= s and n else x for n, m, x, y in
                    zip(r["listed"], r["images"], r["acc_default"], r["acc_drop"])]
            diff = [u - x for u, x in zip(auto, r["acc_default"])]
            mean, ci = mean_ci(diff)
            per_cell.append({"arch": r["arch"], "setting": r["setting"], "acc": statistics.mean(auto),
                             "minus_default": mean, "minus_default_ci95": ci,
                             "dropped_tasks": sum(1 for n, m in zip(r["listed"], r["images"]) if n and n / m >= s)})
        clean_cost = max(-c["minus_default"] for c in per_cell if c["setting"] not in NOISY)
        table.append({"share": s, "mean_acc": statistics.mean(c["acc"] for c in per_cell),
                      "worst_clean_cost": clean_cost, "cells": per_cell})
        print(f"share {s:5.2f}: mean acc {100 * table[-1]['mean_acc']:6.2f}  worst clean/imbalance cost "
              f"{100 * clean_cost:5.2f}  " + "  ".join(
                  f"{c['setting'][:8]}:{100 * c['minus_default']:+.2f}" for c in per_cell), flush=True)
    allowed = [t for t in table if t["worst_clean_cost"] <= MAX_CLEAN_COST]
    chosen = max(allowed, key=lambda t: (t["mean_acc"], -t["share"]))
    print(f"chosen: share {chosen['share']}", flush=True)
    save(Path(args.out), {"command": "python bench/robust_adapt_auto.py " + " ".join(argv or sys.argv[1:]),
                          "commit": git_commit(), "machine": cpu_model(), "rule": __doc__.split("\n\n")[-1].strip(),
                          "max_clean_cost": MAX_CLEAN_COST, "chosen_share": chosen["share"], "shares": table,
                          "tasks": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
