"""Ranking fidelity: does the SuperNet's score order architectures as stand-alone training does?

For one *method* (how the SuperNet is meta-trained, and how the search scores an architecture on
it), this bench meta-trains a SuperNet with ``train.py`` at the ground truth's budget (or takes a
given checkpoint), scores every architecture of ``bench/ground_truth/omniglot_5w1s.json`` with the
search's own scoring (few-shot adaptation on the first validation tasks, as ``EvolutionCallback``
does), and reports against the stand-alone accuracies: Kendall tau, Spearman rho, the
ground-truth rank of the SuperNet's top-1, the overlap of the top 5, and the noise of one score
(its spread over re-drawn scoring tasks) against the spread between architectures.

    .venv/bin/python bench/ranking.py --method uniform           # train (if needed) and score
    .venv/bin/python bench/ranking.py --method all --plot_only   # the scatter plots again

Writes ``bench/ranking/omniglot_5w1s_<method>.json`` and ``..._<method>.png``. A method is a
training (``TRAININGS``) plus a way of scoring; the training run lives in
``runs/ranking/<training>/``, shared by the methods that only score differently, and is reused
once it has finished.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench.ground_truth import cpu_model, git_commit, save  # noqa: E402
from lightning_metanas.checkpoints import data_settings, read_checkpoint  # noqa: E402
from lightning_metanas.data import EpisodicDataModule  # noqa: E402
from lightning_metanas.module import MetaNASModule  # noqa: E402
from lightning_metanas.ranking import rank_agreement  # noqa: E402
from lightning_metanas.scoring import Scorer, stack_tasks  # noqa: E402
from lightning_metanas.search_config import SearchConfig  # noqa: E402
from lightning_metanas.search_space import Architecture  # noqa: E402
from bench.ea_vs_random import run_search  # noqa: E402

BASE = ["--config", "configs/results/omniglot_5w1s.yaml", "--trainer.max_epochs=6"]
SEARCH = ["--config", "configs/results/search.yaml"]
# How each SuperNet is meta-trained: train.py flags after BASE.
TRAININGS: dict[str, list[str]] = {
    # the search as RESULTS.md ran it: population sampling + 25% uniform draws
    "search_v0": SEARCH,
    # single-path one-shot: every task draws its architecture uniformly
    "uniform": [],
    "fair": ["--model.sampling=fair"],
    "sandwich": ["--model.sampling=sandwich"],
}
# method: (training, scoring tasks, query images per class in a scoring task (None: the
# data's), search.size_prior)
METHODS: dict[str, tuple[str, int, Optional[int], float]] = {
    "search_v0": ("search_v0", 20, None, 0.0),  # the search's own scoring: 20 tasks x 1 query
    "uniform": ("uniform", 20, None, 0.0),
    "uniform_t100q5": ("uniform", 100, 5, 0.0),
    "fair_t100q5": ("fair", 100, 5, 0.0),
    "sandwich_t100q5": ("sandwich", 100, 5, 0.0),
    "sandwich_t100q5_size0.1": ("sandwich", 100, 5, 0.1),
    "fair_t100q5_size0.1": ("fair", 100, 5, 0.1),
}


def train(name: str, flags: list[str], runs: Path) -> Path:
    """The SuperNet of training ``name``: ``runs/<name>/version_0/checkpoints/last.ckpt`` once
    a run of all its epochs finished (a partial run is started again)."""
    directory = runs / name
    ckpt = directory / "version_0" / "checkpoints" / "last.ckpt"
    if ckpt.is_file() and (directory / "finished").is_file():
        return ckpt
    if directory.exists():
        import shutil

        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    command = [sys.executable, str(ROOT / "train.py"), *BASE, *flags, "--test=false",
               f"--trainer.logger.init_args.save_dir={runs}", f"--trainer.logger.init_args.name={name}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", WANDB_MODE="disabled")
    start = time.time()
    with open(directory / "train.log", "w") as log:
        rc = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not ckpt.is_file():
        raise SystemExit(f"training {name} failed (rc={rc}); see {directory / 'train.log'}")
    shown = " ".join(["python", "train.py", *BASE, *flags, "--test=false"])
    (directory / "finished").write_text(json.dumps({"command": shown, "seconds": round(time.time() - start, 1)}))
    return ckpt


def scoring_tasks(checkpoint: dict, count: int, queries: Optional[int], redraw: int):
    """Tasks ``redraw * count .. (redraw + 1) * count - 1`` of the validation split (redraw 0:
    the tasks the search scores on)."""
    settings = data_settings(checkpoint)
    data = EpisodicDataModule(**settings)
    data.setup("fit")
    dataset = data.task_dataset("val")
    dataset = dataset.variant(queries=queries or dataset.queries, num_tasks=(redraw + 1) * count)
    return stack_tasks([dataset[i] for i in range(redraw * count, (redraw + 1) * count)])


def score(ckpt: Path, archs: list[Architecture], count: int, queries: Optional[int], redraws: int,
          size_prior: float) -> list[list[float]]:
    """``scores[r][i]``: architecture ``i`` scored on redraw ``r`` of the scoring tasks."""
    checkpoint = read_checkpoint(ckpt)
    model = MetaNASModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    steps = model.meta.eval_inner_steps
    return [Scorer.on_tasks(model.adapter, scoring_tasks(checkpoint, count, queries, r), steps, size_prior)(archs)
            for r in range(redraws)]


def search_picks(ckpt: Path, count: int, queries: Optional[int], size_prior: float, seeds: list[int],
                 generations: int) -> list[dict]:
    """What the evolutionary search (the settings of ``configs/results/search.yaml``) picks on
    this SuperNet with this scoring, weights fixed, one search per seed."""
    model = MetaNASModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    scorer = Scorer.on_tasks(model.adapter, scoring_tasks(read_checkpoint(ckpt), count, queries, 0),
                             model.meta.eval_inner_steps, size_prior)
    config = SearchConfig(tasks_per_score=count, score_queries=queries, size_prior=size_prior)
    picks = []
    for seed in seeds:
        result = run_search(model.space, config, seed, generations, scorer)
        picks.append({"seed": seed, "arch": result["best_arch"].to_dict(), "label": str(result["best_arch"]),
                      "score": result["best_score"], "real_scorings": result["real_scorings"]})
    return picks


def percentile_rank(acc: float, accs: list[float]) -> float:
    """Share of the ground truth strictly above ``acc`` (0: the best of them)."""
    return sum(a > acc for a in accs) / len(accs)


def plot(result: dict, ground_truth: dict[Architecture, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [100 * e["supernet_score"] for e in result["entries"]]
    ys = [100 * ground_truth[Architecture.from_dict(e["arch"])]["acc"] for e in result["entries"]]
    fig, ax = plt.subplots(figsize=(4.8, 4.0), dpi=110)
    ax.scatter(xs, ys, s=18)
    reference = Architecture(("conv3x3",) * 4, (64,) * 4)
    for e, x, y in zip(result["entries"], xs, ys):
        if Architecture.from_dict(e["arch"]) == reference:
            ax.scatter([x], [y], s=60, facecolors="none", edgecolors="red", label="Conv-4")
    ax.set_xlabel("SuperNet score (%)")
    ax.set_ylabel("stand-alone meta-test accuracy (%)")
    ax.set_title(f"{result['method']}: Kendall tau {result['kendall_tau']:.2f}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", nargs="+", required=True, help=f"of {list(METHODS)}, or all")
    parser.add_argument("--ground_truth", default=str(ROOT / "bench/ground_truth/omniglot_5w1s.json"))
    parser.add_argument("--out_dir", default=str(ROOT / "bench/ranking"))
    parser.add_argument("--runs", default=str(ROOT / "runs/ranking"))
    parser.add_argument("--ckpt_path", default=None, help="score this checkpoint instead of training")
    parser.add_argument("--redraws", type=int, default=3, help="disjoint sets of scoring tasks")
    parser.add_argument("--plot_only", action="store_true")
    parser.add_argument("--search_seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="seeds of the evolutionary searches run on the SuperNet (none: no search)")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--train_only", action="store_true", help="meta-train the method's SuperNet, score nothing")
    parser.add_argument("--min_architectures", type=int, default=24,
                        help="refuse to score against a ground truth with fewer architectures")
    args = parser.parse_args(argv)
    entries = json.loads(Path(args.ground_truth).read_text())
    seed0 = [e for e in entries if e.get("seed", 0) == 0]
    # the fixed set ranks; architectures added later (searches' picks trained alone, group
    # "extra") only tell where a pick stands
    truth = {Architecture.from_dict(e["arch"]): e for e in seed0 if e["group"] != "extra"}
    known_accs = {Architecture.from_dict(e["arch"]): e for e in seed0}
    archs = list(truth)
    if len(archs) < args.min_architectures and not args.train_only:
        parser.error(f"{args.ground_truth} holds {len(archs)} architectures (of seed 0), fewer than "
                     f"--min_architectures {args.min_architectures}: let bench/ground_truth.py finish first")
    methods = list(METHODS) if args.method == ["all"] else args.method
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(METHODS)} or all")
    for method in methods:
        out = Path(args.out_dir) / f"omniglot_5w1s_{method}.json"
        if args.plot_only:
            if out.is_file():
                plot(json.loads(out.read_text()), truth, out.with_suffix(".png"))
            continue
        training, count, queries, size_prior = METHODS[method]
        ckpt = Path(args.ckpt_path) if args.ckpt_path else train(training, TRAININGS[training], Path(args.runs))
        if args.train_only:
            continue
        start = time.time()
        scores = score(ckpt, archs, count, queries, args.redraws, size_prior)
        seconds = time.time() - start
        search_scores = scores[0]  # what the search would see
        acc = [truth[a]["acc"] for a in archs]
        agreement = rank_agreement(search_scores, acc)
        per_arch_sd = [statistics.pstdev(s) for s in zip(*scores)] if args.redraws > 1 else [0.0] * len(archs)
        mean_scores = [statistics.fmean(s) for s in zip(*scores)]
        finished = Path(args.runs) / training / "finished"
        training = json.loads(finished.read_text()) if finished.is_file() and not args.ckpt_path else {}
        result = {
            "method": method,
            "training": training,
            **agreement,
            "kendall_tau_mean_of_redraws": rank_agreement(mean_scores, acc)["kendall_tau"],
            "architectures": len(archs),
            "score_tasks": count,
            "score_queries": queries,
            "size_prior": size_prior,
            "noise": {
                "redraws": args.redraws,
                "score_sd_over_redraws": statistics.fmean(per_arch_sd),
                "score_sd_between_architectures": statistics.pstdev(search_scores),
            },
            "entries": [
                {"arch": a.to_dict(), "supernet_score": s, "redraw_scores": list(r), "stand_alone_acc": truth[a]["acc"]}
                for a, s, r in zip(archs, search_scores, zip(*scores))
            ],
            "train_command": training.get("command", f"(given checkpoint {args.ckpt_path})"),
            "train_seconds": training.get("seconds"),
            "score_seconds": round(seconds, 1),
            "command": "python bench/ranking.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "ground_truth": os.path.relpath(args.ground_truth, ROOT),
            "commit": git_commit(),
            "machine": cpu_model(),
        }
        if args.search_seeds:
            picks = search_picks(ckpt, count, queries, size_prior, args.search_seeds, args.generations)
            accs = [truth[a]["acc"] for a in archs]
            for pick in picks:
                known = known_accs.get(Architecture.from_dict(pick["arch"]))
                pick["stand_alone_acc"] = known["acc"] if known else None
                pick["ground_truth_share_above"] = percentile_rank(known["acc"], accs) if known else None
            result["search_picks"] = picks
        save(out, result)  # type: ignore[arg-type]
        plot(result, truth, out.with_suffix(".png"))
        print(f"{method}: tau {result['kendall_tau']:.3f} rho {result['spearman_rho']:.3f} "
              f"top-1 at GT rank {result['top1_ground_truth_rank']}/{len(archs)}, top-5 overlap "
              f"{result['top5_overlap']}, score sd {result['noise']['score_sd_over_redraws']:.4f} "
              f"(redraws) vs {result['noise']['score_sd_between_architectures']:.4f} (architectures)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
