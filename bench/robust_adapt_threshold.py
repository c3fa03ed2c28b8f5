"""The default threshold of the ``prototype`` suspect score, chosen on Omniglot's validation
classes (never on test tasks), and the suspect scores compared.

    .venv/bin/python bench/robust_adapt_threshold.py --checkpoints CONV4.ckpt FIVE_LAYER.ckpt \\
        --scores bench/robust_adapt/scores_val.json

The ``prototype`` score needs no fine-tuning (the meta-weights' features), so it is computed here
for ``--tasks`` validation tasks of each network at 0%, 20% and 40% label noise, drawn as
``bench/robust_adapt.py --split val`` draws them. For a grid of thresholds: the pooled
precision and recall of the suspects ``suspects.flagged`` lists, and images flagged per clean
task. The chosen threshold maximises, at 20% noise, the smallest of precision and recall over
the networks; with several ``--layers`` (``SuspectConfig.layers``) the pair of layer count and
threshold that does:

    .venv/bin/python bench/robust_adapt_threshold.py --checkpoints C1 C2 C3 C4 --layers 1 2 3 \
        --out bench/robust_adapt/layers_val.json

``--scores`` (``bench/robust_adapt.py --scores_out``) adds each score's AUROC,
from the adaptations that bench ran. Writes ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import save  # noqa: E402
from bench.omniglot_tasks import omniglot_tasks  # noqa: E402
from bench.robust_adapt import KEY, QUERIES, WAYS, noisy  # noqa: E402
from lightning_metanas import seeding  # noqa: E402
from lightning_metanas.module import MetaNASModule  # noqa: E402
from lightning_metanas.suspects import SCORES, auroc, flagged, layered_prototype_scores, precision_recall  # noqa: E402

NOISE = (0.0, 0.2, 0.4)


def pooled(tasks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], threshold: float) -> dict:
    """Precision, recall and images flagged per task over ``(scores, labels, wrong)`` tasks."""
    hits = flags = wrong = 0
    for scores, labels, mislabelled in tasks:
        h, f, w = precision_recall(flagged(scores, labels, threshold), mislabelled)
        hits, flags, wrong = hits + h, flags + f, wrong + w
    return {"precision": hits / flags if flags else float("nan"), "recall": hits / wrong if wrong else float("nan"),
            "flagged_per_task": flags / len(tasks)}


def validation_scores(path: str, tasks: int, root: str, seed: int, layers: int = 1) -> dict[float, list]:
    """Per noise level, ``(prototype scores, labels, wrong)`` of each validation task, the score
    over the last ``layers`` layers (``SuspectConfig.layers``)."""
    model = MetaNASModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    arch = model.evaluated_architecture()
    out: dict[float, list] = {p: [] for p in NOISE}
    for t, (train, _) in enumerate(omniglot_tasks(root, 0, "val", tasks, (5,) * WAYS, QUERIES, seed, KEY)):
        with torch.no_grad():
            features = model.supernet.layer_features(train.images, arch)[-layers:]
        for p in NOISE:
            labels, wrong = noisy(train.labels, p, seeding.rng(seed, KEY, t, "noise"))
            out[p].append((layered_prototype_scores(features, labels, WAYS), labels, wrong))
    return out


def aurocs(path: Path) -> list[dict]:
    """Each score's AUROC per (network, noisy setting), from ``robust_adapt.py --scores_out``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in json.loads(path.read_text()):
        if any(r["wrong"]):
            groups.setdefault((r["arch"], r["setting"]), []).append(r)
    table = []
    for (arch, setting), rs in sorted(groups.items()):
        wrong = torch.cat([torch.tensor(r["wrong"]) for r in rs])
        row = {"arch": arch, "setting": setting, "tasks": len(rs)}
        for score in SCORES:
            values = torch.cat([torch.tensor(r[score], dtype=torch.float64) for r in rs])
            keep = ~values.isnan()  # aum of an image a drop kept out of fine-tuning
            row[score] = auroc(values[keep].nan_to_num(neginf=-1e9), wrong[keep])
        table.append(row)
        print(f"  AUROC {arch} {setting} ({len(rs)} tasks): " + "  ".join(f"{s} {row[s]:.3f}" for s in SCORES))
    return table


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--root", default="data/omniglot")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, nargs="+", default=[1],
                        help="Layer counts to compare: the score over the last LAYERS layers (SuspectConfig.layers).")
    parser.add_argument("--scores", default=None, help="Per-image scores of robust_adapt.py --split val --scores_out.")
    parser.add_argument("--out", default=str(ROOT / "bench/robust_adapt/threshold_val.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sweep = []
    for layers in args.layers:
        sweep += layer_sweep(layers, {path: validation_scores(path, args.tasks, args.root, args.seed, layers)
                                      for path in args.checkpoints}, args.tasks)
    best = max(sweep, key=lambda p: p["worst_noise20"])
    print(f"chosen: prototype over {best['layers']} layer(s) > {best['threshold']} (the smaller of precision and "
          f"recall at 20% noise, over the networks, is {best['worst_noise20']:.3f})")
    table = aurocs(Path(args.scores)) if args.scores else []
    save(Path(args.out), {"score": "prototype", "layers": best["layers"], "threshold": best["threshold"],
                          "tasks": args.tasks, "checkpoints": args.checkpoints, "sweep": sweep, "auroc": table,
                          "command": "python bench/robust_adapt_threshold.py " + " ".join(
                              argv if argv is not None else sys.argv[1:])})
    return 0


def layer_sweep(layers: int, per_network: dict[str, dict[float, list]], tasks: int) -> list[dict]:
    """The threshold grid's points for one layer count, printed as they are computed."""
    sweep = []
    print(f"prototype threshold ({layers} layer(s)) on {tasks} validation tasks per network: precision / recall "
          "at 20% and 40% noise, images flagged per clean 5-shot task")
    for threshold in [round(0.01 * i, 2) for i in range(0, 51)]:
        point = {"layers": layers, "threshold": threshold, "networks": {}}
        for path, levels in per_network.items():
            point["networks"][path] = {f"noise{int(100 * p)}": pooled(levels[p], threshold) for p in NOISE}
        point["worst_noise20"] = min(min(n["noise20"]["precision"], n["noise20"]["recall"])
                                     for n in point["networks"].values())
        sweep.append(point)
        print(f"  {threshold:.2f}: " + " | ".join(
            f"P {n['noise20']['precision']:.2f} R {n['noise20']['recall']:.2f}, 40%: P {n['noise40']['precision']:.2f} "
            f"R {n['noise40']['recall']:.2f}, clean {n['noise0']['flagged_per_task']:.2f}/task"
            for n in point["networks"].values()))
    return sweep


if __name__ == "__main__":
    sys.exit(main())
