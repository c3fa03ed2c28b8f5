"""Adaptation under on-site conditions: wrong labels and imbalanced classes in the images a
user adapts on, on unseen Omniglot characters, for each remedy of ``adapt.py`` against plain
fine-tuning on the same tasks.

    .venv/bin/python bench/robust_adapt.py --checkpoints CONV4.ckpt FIVE_LAYER.ckpt --tasks 300
    .venv/bin/python bench/robust_adapt.py --checkpoints ... --split val --tasks 100 \\
        --out bench/robust_adapt/omniglot_val.json --scores_out bench/robust_adapt/scores_val.json

Each checkpoint is a network meta-trained alone (its ``evaluated_architecture``). Per task: 5
characters of ``--split`` (``test``: never meta-trained on; ``val``: where the defaults and
the suspect threshold are chosen), drawn with fixed seeds, the same tasks in every mode; queries
are always clean, 5 per character. Settings: ``clean-1shot``, ``clean-5shot``, ``noise20`` and
``noise40`` (each label of a 5-shot support set replaced, with that probability, by another
class, drawn once per task: the images wrong at 20% are among those wrong at 40%), and
``imbalance-1-2-3-5-10``, ``imbalance-1-1-1-1-10`` (shots per class, shuffled per task).

Modes (``MODES``): ``naive`` (cross-entropy on every image, no remedy, with adapt.py's schedule:
20 SGD steps at the checkpoint's inner step size on all images at once), ``adam100`` (naive with
the fine-tuning adapt.py had before: 100 Adam steps at 0.01 on mini-batches of 32), ``sgd10`` and
``sgd20`` (naive with 10 or 20 steps: the comparison the 20-step default was chosen on; ``sgd20``
equals ``naive`` since), ``default``
(adapt.py's defaults: balanced loss, suspects over two layers dropped when they are 10% of the
images or more; cells measured as ``layers2`` are this), ``default_layers1`` (the same with the
one-layer suspect score at 0.24, the default before; cells measured as ``default`` then), ``balanced`` (class-balanced loss), ``drop`` (suspects re-adapted without), ``balanced_drop``
(both), ``smooth``
and ``sce`` (robust losses). Each adaptation is ``lightning_metanas.adaptation.adapt`` (the code
behind adapt.py); its model is saved, loaded back and classifies every held-out image alone
(inductive); the same weights on the held-out images as one batch give the transductive figure.

One entry per (network, setting, mode) in ``--out``: accuracy and balanced accuracy (mean
per-class recall; with 5 queries per class the two are equal) with 95% intervals over tasks,
for noise settings the pooled precision and recall of the suspects listed, for imbalance the
recall of the one-image classes. A cell already in ``--out`` is skipped; the file is written
after each cell, merged with what other processes wrote to it meanwhile (so benches on other
networks or modes can share one file).
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.adapt_omniglot import mean_ci  # noqa: E402
from bench.common import cpu_model, git_commit, load, save  # noqa: E402
from bench.omniglot_tasks import omniglot_tasks  # noqa: E402
from lightning_metanas import heldout, seeding  # noqa: E402
from lightning_metanas.adapted_model import AdaptedModel, Preprocessing  # noqa: E402
from lightning_metanas.adaptation import FinetuneConfig, adapt  # noqa: E402
from lightning_metanas.checkpoints import data_settings, read_checkpoint  # noqa: E402
from lightning_metanas.data.images import LabelledImages  # noqa: E402
from lightning_metanas.module import MetaNASModule  # noqa: E402
from lightning_metanas.suspects import SuspectConfig, precision_recall  # noqa: E402

WAYS, QUERIES, KEY = 5, 5, "robust_adapt"


@dataclass(frozen=True)
class Setting:
    shots: tuple[int, ...]
    noise: float = 0.0

    @property
    def imbalanced(self) -> bool:
        return len(set(self.shots)) > 1


SETTINGS = {
    "clean-1shot": Setting((1,) * WAYS),
    "clean-5shot": Setting((5,) * WAYS),
    "noise20": Setting((5,) * WAYS, 0.2),
    "noise40": Setting((5,) * WAYS, 0.4),
    "imbalance-1-2-3-5-10": Setting((1, 2, 3, 5, 10)),
    "imbalance-1-1-1-1-10": Setting((1, 1, 1, 1, 10)),
}
NAIVE = FinetuneConfig(balanced=False, loss="ce")  # adapt.py's schedule, plain cross-entropy
# mode -> (fine-tuning, whether suspects are dropped); "default" is what adapt.py does unasked
MODES = {
    "naive": (NAIVE, False),
    # adapt.py's fine-tuning before the 20-step SGD default was chosen (on validation classes)
    "adam100": (FinetuneConfig(steps=100, lr=0.01, optimizer="adam", batch_size=32), False),
    "sgd10": (FinetuneConfig(steps=10), False),  # the inner loop's step size, more steps
    "sgd20": (FinetuneConfig(steps=20), False),
    "default": (FinetuneConfig(), SuspectConfig().drop),
    "balanced": (replace(NAIVE, balanced=True), False),
    "drop": (NAIVE, True),
    "balanced_drop": (replace(NAIVE, balanced=True), True),  # both remedies
    "smooth": (replace(NAIVE, loss="smooth"), False),
    "sce": (replace(NAIVE, loss="sce"), False),
    # the default before the suspect score took two layers (measured as "default" until then)
    "default_layers1": (FinetuneConfig(), SuspectConfig().drop),
}
# modes that list suspects otherwise than adapt.py's default (SuspectConfig fields)
MODE_SUSPECTS = {"default_layers1": {"layers": 1, "threshold": 0.24}}


def mode_rule(mode: str) -> SuspectConfig:
    """The suspect setting ``mode`` adapts with."""
    return SuspectConfig(drop=MODES[mode][1], **MODE_SUSPECTS.get(mode, {}))


def noisy(labels: torch.Tensor, p: float, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Each label replaced, with probability ``p``, by one of the other classes: (new labels,
    which are wrong). Two draws per image whatever ``p``, so a lower ``p`` flips a subset."""
    out = labels.clone()
    for i, label in enumerate(labels.tolist()):
        u, other = rng.random(), rng.choice([c for c in range(WAYS) if c != label])
        if u < p:
            out[i] = other
    return out, out != labels


def effective(mode: str, train: LabelledImages) -> tuple:
    """What a mode does to this task, without its drop: modes with equal keys (and nothing to
    drop) train the same network, so it is trained once."""
    tuning, _ = MODES[mode]
    counts = torch.bincount(train.labels, minlength=WAYS)
    schedule = (tuning.optimizer, tuning.steps, tuning.lr, tuning.batch_size)
    return schedule, tuning.loss, tuning.smoothing if tuning.loss == "smooth" else None, \
        tuning.balanced and len(set(counts.tolist())) > 1


def measure(result, val: LabelledImages, tmp: str) -> dict:
    """Accuracy and per-class recall of an adaptation: the saved model loaded back, each held-out
    image alone; and the transductive predictions."""
    saved = AdaptedModel.load(result.model.save(Path(tmp) / "model.pt"))
    out = {}
    for name, predicted in (("", saved.logits(val.images, batch_size=1).argmax(-1)),
                            ("_transductive", result.predictions_transductive)):
        matrix = heldout.confusion_matrix(predicted, val.labels, WAYS)
        out |= {"acc" + name: float((predicted == val.labels).float().mean()),
                "balanced_acc" + name: heldout.balanced_accuracy(matrix),
                "recall" + name: heldout.recall_per_class(matrix)}
    return out


def run_setting(model: MetaNASModule, name: str, modes: list[str], args, scores: Optional[list]) -> list[dict]:
    """The cells of one (network, setting): every mode on the same ``args.tasks`` tasks."""
    setting, arch = SETTINGS[name], model.evaluated_architecture()
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    start = time.time()
    tasks = omniglot_tasks(args.root, args.split_seed, args.split, args.tasks, setting.shots, QUERIES, args.seed, KEY,
                           shuffle_shots=setting.imbalanced)
    with tempfile.TemporaryDirectory() as tmp:
        for t, (train, val) in enumerate(tasks):
            labels, wrong = noisy(train.labels, setting.noise, seeding.rng(args.seed, KEY, t, "noise"))
            train = LabelledImages(train.images, labels, train.class_names)
            done: dict[tuple, dict] = {}
            for mode in sorted(modes, key=lambda m: MODES[m][1] is not False):  # the modes that drop nothing first
                rule = mode_rule(mode)
                key = effective(mode, train) + (rule.layers, rule.threshold)  # what is listed differs too
                row = reused(done, key, rule, len(labels))
                if row is None:
                    result = adapt(model.supernet, model.meta, train, val, Preprocessing(28, 1, True),
                                   tuning=MODES[mode][0], arch=arch, seed=t, suspects=rule)
                    row = measure(result, val, tmp) | {"suspects": result.suspects, "dropped": result.dropped}
                    if scores is not None and not done:
                        scores.append({"setting": name, "arch": str(arch), "task": t, "labels": labels.tolist(),
                                       "wrong": wrong.tolist(),
                                       **{k: v.tolist() for k, v in result.suspect_scores.items()}})
                    done[key + ("drop",) if result.dropped else key] = row
                rare = [c for c in range(WAYS) if int((train.labels == c).sum()) == 1] if setting.imbalanced else []
                hits = precision_recall(torch.tensor(row["suspects"], dtype=torch.long), wrong)
                rows[mode].append(row | {"rare_recall": sum(row["recall"][c] for c in rare) / len(rare) if rare else None,
                                         "hits": hits})
    return [cell(model, name, mode, rows[mode], time.time() - start) for mode in modes]


def reused(done: dict[tuple, dict], key: tuple, rule: SuspectConfig, images: int) -> Optional[dict]:
    """The row of an adaptation this task already made that ``rule`` would make too: the one
    without dropping when it drops nothing (known from that row's suspects), else the one that
    dropped them (the suspects, and so what is dropped, do not depend on the mode)."""
    if rule.drop is False:
        return done.get(key)
    if key in done:
        return done[key] if not rule.drops(len(done[key]["suspects"]), images) else done.get(key + ("drop",))
    return done.get(key + ("drop",)) if rule.drop is True else None


def cell(model: MetaNASModule, name: str, mode: str, rows: list[dict], seconds: float) -> dict:
    """One entry of the output: the mode's figures over the tasks of the setting."""
    tuning = MODES[mode][0]
    entry = {"arch": str(model.evaluated_architecture()), "setting": name, "mode": mode, "tasks": len(rows)}
    for key in ("acc", "balanced_acc", "acc_transductive", "balanced_acc_transductive", "rare_recall"):
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            entry[key], entry[key + "_ci95"] = mean_ci(values)
    if SETTINGS[name].noise:
        hits, flagged, wrong = (sum(r["hits"][i] for r in rows) for i in range(3))
        entry |= {"flag_precision": hits / flagged if flagged else float("nan"),
                  "flag_recall": hits / wrong if wrong else float("nan"), "flagged": flagged, "mislabelled": wrong}
    return entry | {
        "dropped": sum(len(r["suspects"]) for r in rows if r["dropped"]),
        "finetune": vars(tuning.resolved(model.meta)),
        "suspects": vars(mode_rule(mode)),
        "per_task": {k: [r[k] for r in rows] for k in ("acc", "acc_transductive", "rare_recall") if rows[0][k] is not None},
        "seconds_setting": round(seconds, 1)}


def cell_key(entry: dict) -> tuple:
    return entry["arch"], entry["setting"], entry["mode"], entry["tasks"], entry["split"]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", required=True, help="Networks meta-trained alone (.ckpt).")
    parser.add_argument("--root", default="data/omniglot")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench/robust_adapt/omniglot.json"))
    parser.add_argument("--scores_out", default=None,
                        help="Also write every support image's suspect scores (naive mode).")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    entries = load(out) or []
    done = {cell_key(e) for e in entries}
    scores = load(Path(args.scores_out)) if args.scores_out else None
    command = "python bench/robust_adapt.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for path in args.checkpoints:
        model = MetaNASModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        args.split_seed = int((data_settings(read_checkpoint(path)) or {}).get("split_seed", 0))
        arch = str(model.evaluated_architecture())
        for name in args.settings:
            modes = [m for m in args.modes if (arch, name, m, args.tasks, args.split) not in done]
            if not modes:
                continue
            for entry in run_setting(model, name, modes, args, scores):
                entries.append(entry | {"split": args.split, "checkpoint": path, "command": command,
                                        "machine": cpu_model(), "commit": git_commit()})
                flags = (f"  flags P {entry['flag_precision']:.2f} R {entry['flag_recall']:.2f}"
                         if "flag_precision" in entry else "")
                print(f"{arch} {name:22s} {entry['mode']:9s} acc {100 * entry['acc']:6.2f} ± {100 * entry['acc_ci95']:.2f}"
                      f"  transductive {100 * entry['acc_transductive']:6.2f}{flags}", flush=True)
            on_disk = load(out) or []  # another process may have added cells meanwhile
            have = {cell_key(e) for e in on_disk}
            save(out, on_disk + [e for e in entries if cell_key(e) not in have])
            if scores is not None:
                save(Path(args.scores_out), scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
