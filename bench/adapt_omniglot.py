"""Adaptation to new tasks of unseen Omniglot alphabets: the saved model's accuracy one image at
a time (inductive) against the same adapted weights on a batch (transductive), for the
meta-search's architecture and for a search on the task (warm-started and from scratch).

    .venv/bin/python bench/adapt_omniglot.py --ckpt_path runs/search_quick/version_0/checkpoints/last.ckpt

Each task: ``--ways`` characters of the checkpoint's *test* split (never meta-trained on), drawn
with a seeded generator, ``--shots`` drawings per character to adapt on and ``--held_out`` to
measure on. Per task and mode, ``lightning_metanas.adaptation.adapt`` runs (the code behind
``adapt.py``), its model is saved and loaded back (``AdaptedModel``), and the loaded model
classifies every held-out drawing alone. Modes: ``given`` (the checkpoint's architecture, as
``adapt.py --model.eval_arch best_arch.json``), ``warm`` and ``scratch`` (a search of
``--scorings`` on the task). Reports the mean over tasks with 95% intervals; writes
``bench/adapt_omniglot/<name>.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import cpu_model, git_commit, save  # noqa: E402
from bench.omniglot_tasks import omniglot_tasks  # noqa: E402
from lightning_metanas.adapted_model import AdaptedModel, Preprocessing  # noqa: E402
from lightning_metanas.adaptation import FinetuneConfig, TaskSearchConfig, adapt  # noqa: E402
from lightning_metanas.checkpoints import data_settings, read_checkpoint, search_state  # noqa: E402
from lightning_metanas.module import MetaNASModule  # noqa: E402

MODES = ("given", "warm", "scratch")


def mean_ci(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0)


def tasks(root: str, split_seed: int, count: int, ways: int, shots: int, held_out: int, seed: int):
    """``count`` tasks of unseen test characters: (train, held-out) image sets."""
    return omniglot_tasks(root, split_seed, "test", count, [shots] * ways, held_out, seed, "adapt_omniglot")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--root", default="data/omniglot")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--held_out", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--scorings", type=int, default=24)
    parser.add_argument("--finetune_steps", type=int, default=FinetuneConfig.steps,
                        help="Fine-tuning steps (default: adapt.py's).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    checkpoint = read_checkpoint(args.ckpt_path)
    split_seed = int((data_settings(checkpoint) or {}).get("split_seed", 0))
    model = MetaNASModule.load_from_checkpoint(args.ckpt_path, map_location="cpu", weights_only=True)
    state = search_state(checkpoint)
    preprocessing = Preprocessing(28, 1, True)
    rows: dict[str, list[dict]] = {m: [] for m in args.modes}
    with tempfile.TemporaryDirectory() as tmp:
        for t, (train, val) in enumerate(tasks(args.root, split_seed, args.tasks, args.ways, args.shots,
                                               args.held_out, args.seed)):
            for mode in args.modes:
                start = time.time()
                given = model.evaluated_architecture() if mode == "given" else None
                search = TaskSearchConfig(scorings=args.scorings, warm_start=mode == "warm",
                                          tasks_per_score=2, score_shots=max(1, args.shots - 2), score_queries=2)
                result = adapt(model.supernet, model.meta, train, val, preprocessing, search,
                               FinetuneConfig(steps=args.finetune_steps), state if mode == "warm" else None,
                               given, seed=args.seed + t)
                loaded = AdaptedModel.load(result.model.save(Path(tmp) / f"{mode}-{t}.pt"))
                alone = torch.cat([loaded.logits(val.images[i : i + 1]) for i in range(len(val.labels))]).argmax(-1)
                inductive = float((alone == val.labels).float().mean())
                rows[mode].append({"task": t, "arch": str(result.arch), "inductive": inductive,
                                   "transductive": result.val_acc_transductive, "seconds": round(time.time() - start, 1)})
                print(f"task {t:2d} {mode:8s} one image at a time {100 * inductive:6.2f}%  as a batch "
                      f"{100 * result.val_acc_transductive:6.2f}%  {result.arch}", flush=True)
    summary = {}
    print(f"\n{args.tasks} tasks, {args.ways}-way, {args.shots} drawings to adapt on, {args.held_out} held out per "
          f"character (unseen test alphabets); checkpoint {args.ckpt_path}\n")
    print("| architecture | one image at a time (saved model) | as one batch (transductive) | difference |")
    print("|---|---|---|---|")
    for mode, results in rows.items():
        ind, tra = mean_ci([r["inductive"] for r in results]), mean_ci([r["transductive"] for r in results])
        diff = mean_ci([r["inductive"] - r["transductive"] for r in results])
        summary[mode] = {"inductive": ind, "transductive": tra, "difference": diff}
        label = {"given": "the checkpoint's (meta-search's)", "warm": "searched on the task, warm start",
                 "scratch": "searched on the task, from scratch"}[mode]
        print(f"| {label} | {100 * ind[0]:.2f} ± {100 * ind[1]:.2f} | {100 * tra[0]:.2f} ± {100 * tra[1]:.2f} | "
              f"{100 * diff[0]:+.2f} ± {100 * diff[1]:.2f} |")
    out = Path(args.out) if args.out else ROOT / "bench/adapt_omniglot" / f"{Path(args.ckpt_path).parent.parent.parent.name}.json"
    save(out, {"settings": vars(args), "summary": summary, "rows": rows, "commit": git_commit(), "machine": cpu_model(),
               "command": "python bench/adapt_omniglot.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
