"""Ranking fidelity, step 1: SuperNets, and their scores of every ground-truth architecture.

For each way of meta-training a SuperNet (``TRAININGS``: the sampling rule), this bench
meta-trains one with ``train.py`` at the ground truth's budget (19,200 tasks, Omniglot 5-way
1-shot), then scores every architecture of the version-2 ground truth the way the search does
(``scoring.Scorer``: adaptation on the first 100 validation tasks with 5 query images per class)
and once more on the next 100 tasks (the score's noise). Scores are stored raw (no size prior):
``bench/ranking_table.py`` applies the priors, chooses the method on the validation column and
reports every column with its baselines.

    .venv/bin/python bench/ranking.py --training fair uniform sandwich   # train (once) and score
    .venv/bin/python bench/ranking.py --training fair --train_only

Writes ``bench/ranking/omniglot_5w1s_<training>_scores.json``; the training runs live in
``runs/ranking_v2/<training>/`` and are reused once finished.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, git_commit, load, run_train, save, shown  # noqa: E402
from lightning_metanas.checkpoints import data_settings, read_checkpoint  # noqa: E402
from lightning_metanas.data import EpisodicDataModule  # noqa: E402
from lightning_metanas.module import MetaNASModule  # noqa: E402
from lightning_metanas.scoring import Scorer, stack_tasks  # noqa: E402
from lightning_metanas.search_space import Architecture  # noqa: E402

BASE = ["--config", "configs/results/omniglot_5w1s.yaml", "--trainer.max_epochs=6", "--test=false"]
TRAININGS: dict[str, list[str]] = {  # train.py flags after BASE
    "uniform": ["--model.sampling=uniform"],  # single-path one-shot: every task draws uniformly
    "fair": ["--model.sampling=fair"],  # the configs' warm-up sampling
    "sandwich": ["--model.sampling=sandwich"],
}
SCORE_TASKS, SCORE_QUERIES = 100, 5  # the search's defaults (SearchConfig)
GROUND_TRUTH = ROOT / "bench/ground_truth/omniglot_5w1s_v2.json"


def supernet(training: str, runs: Path) -> tuple[Path, dict]:
    """The finished SuperNet of ``training`` (trained now if there is none) and its record."""
    name = f"supernet_{training}"
    finished = runs / name / "finished.json"
    ckpt = runs / name / "version_0" / "checkpoints" / "last.ckpt"
    if finished.is_file() and ckpt.is_file():
        return ckpt, json.loads(finished.read_text())
    run, command = run_train([*BASE, *TRAININGS[training], "--seed_everything=0"], runs / name, runs, name)
    if run is None or not ckpt.is_file():
        raise SystemExit(f"training {training} failed; see {runs / name / 'train.log'}")
    record = {"command": shown(command), "seconds": round(run.seconds, 1), "commit": git_commit(),
              "machine": cpu_model()}
    finished.write_text(json.dumps(record))
    return ckpt, record


def validation_tasks(ckpt: Path, redraw: int, count: int = SCORE_TASKS, queries: int = SCORE_QUERIES):
    """Validation tasks ``redraw * count`` to ``(redraw + 1) * count - 1`` with ``queries``
    query images per class (redraw 0: the tasks the search scores on)."""
    data = EpisodicDataModule(**data_settings(read_checkpoint(ckpt)))
    data.setup("fit")
    dataset = data.task_dataset("val").variant(queries=queries, num_tasks=(redraw + 1) * count)
    return stack_tasks([dataset[i] for i in range(redraw * count, (redraw + 1) * count)])


def score_all(ckpt: Path, archs: list[Architecture], redraws: int) -> list[list[float]]:
    """``scores[i][r]``: architecture ``i``'s raw accuracy on redraw ``r`` of the scoring tasks."""
    model = MetaNASModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    per_redraw = [Scorer.on_tasks(model.adapter, validation_tasks(ckpt, r), model.meta.eval_inner_steps)(archs)
                  for r in range(redraws)]
    return [list(s) for s in zip(*per_redraw)]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--training", nargs="+", required=True, help=f"of {list(TRAININGS)}")
    parser.add_argument("--ground_truth", default=str(GROUND_TRUTH))
    parser.add_argument("--archs", default=str(ROOT / "bench/ground_truth/omniglot_5w1s_v2_archs.json"),
                        help="score these architectures (default: the whole version-2 set, finished or not)")
    parser.add_argument("--out_dir", default=str(ROOT / "bench/ranking"))
    parser.add_argument("--runs", default=str(ROOT / "runs/ranking_v2"))
    parser.add_argument("--redraws", type=int, default=2)
    parser.add_argument("--train_only", action="store_true")
    parser.add_argument("--ckpt_path", default=None, help="score this SuperNet checkpoint instead of training one")
    args = parser.parse_args(argv)
    unknown = [t for t in args.training if t not in TRAININGS]
    if unknown:
        parser.error(f"unknown training(s) {unknown}; choose from {list(TRAININGS)}")
    listed = load(Path(args.archs))
    entries = listed["architectures"] if isinstance(listed, dict) else listed
    archs = list(dict.fromkeys(Architecture.of(e["arch"]) for e in entries))
    for training in args.training:
        if args.ckpt_path:
            ckpt, record = Path(args.ckpt_path), {"command": f"(given checkpoint {args.ckpt_path})"}
        else:
            ckpt, record = supernet(training, Path(args.runs))
        if args.train_only:
            continue
        out = Path(args.out_dir) / f"omniglot_5w1s_{training}_scores.json"
        done = {e["label"]: e for e in (load(out) or {}).get("entries", [])} if out.is_file() else {}
        todo = [a for a in archs if str(a) not in done]
        start = time.time()
        for arch, scores in zip(todo, score_all(ckpt, todo, args.redraws) if todo else []):
            done[str(arch)] = {"label": str(arch), "arch": arch.to_dict(), "accuracy": scores}
        save(out, {
            "training": training, "train": record, "score_tasks": SCORE_TASKS, "score_queries": SCORE_QUERIES,
            "redraws": args.redraws, "score_seconds": round(time.time() - start, 1),
            "command": "python bench/ranking.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "commit": git_commit(), "machine": cpu_model(),
            "entries": sorted(done.values(), key=lambda e: e["label"]),
        })
        print(f"{training}: {len(todo)} architectures scored in {time.time() - start:.0f} s -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
