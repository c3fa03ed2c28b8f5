"""Evolutionary search vs random search at the same number of real scorings (RESULTS.md).

    .venv/bin/python bench/ea_vs_random.py --ckpt_path runs/results_uniform_supernet/version_0/checkpoints/last.ckpt

Both searches are ``EvolutionarySearch`` with the same settings except ``strategy``
(``evolution``: crossover + mutation, predictor screening once it is trusted; ``random``:
fresh uniform samples). They score architectures on a meta-trained SuperNet whose weights
stay fixed, so a score depends on the architecture alone: the comparison is about how the
search spends its scorings, not about weights moving under it (``rescore_population`` is
off, every scoring is a new architecture). The score is the search's own: mean query
accuracy after the run's adaptation steps on the first ``--tasks_per_score`` validation
tasks. Each search's best architecture is then meta-tested on ``--test_tasks`` test tasks,
which no search saw. Scores are cached by architecture (deterministic), so an architecture
both searches visit costs one scoring.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_metanas.checkpoints import CheckpointError, data_settings, read_checkpoint  # noqa: E402
from lightning_metanas.data import EpisodicDataModule  # noqa: E402
from lightning_metanas.evolution import EvolutionarySearch, EvolutionConfig  # noqa: E402
from lightning_metanas.module import MetaNASModule  # noqa: E402
from lightning_metanas.predictor import PredictorConfig  # noqa: E402
from lightning_metanas.scoring import Scorer, first_tasks  # noqa: E402

STRATEGIES = ("evolution", "random")


def parse(args=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="meta-trained SuperNet checkpoint")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--generations", type=int, default=15)
    parser.add_argument("--population_size", type=int, default=8)
    parser.add_argument("--offspring", type=int, default=4)
    parser.add_argument("--pool_size", type=int, default=16)
    parser.add_argument("--min_archive", type=int, default=16, help="predictor's min_archive")
    parser.add_argument("--tasks_per_score", type=int, default=30)
    parser.add_argument("--test_tasks", type=int, default=200)
    parser.add_argument("--out", default=None, help="JSON with every run's curve and result")
    return parser.parse_args(args)


def run_search(space, config: EvolutionConfig, seed: int, generations: int, scorer: Scorer) -> dict:
    """One search of ``generations`` generations on fixed weights; its best-so-far curve."""
    search = EvolutionarySearch(space, EvolutionConfig(**{**vars(config), "generations": generations}), seed=seed)
    search.run(scorer)
    curve = []  # best score found after each real scoring, in the order scored
    for arch in search.archive:
        curve.append(max(search.archive[arch], curve[-1]) if curve else search.archive[arch])
    best = max(search.archive, key=search.archive.get)
    return {"real_scorings": len(search.archive), "best_score": search.archive[best], "best_arch": best, "curve": curve}


def main(args=None) -> dict:
    config = parse(args)
    checkpoint = read_checkpoint(config.ckpt_path)
    settings = data_settings(checkpoint)
    if settings is None:
        raise CheckpointError(f"--ckpt_path {config.ckpt_path} holds no data settings")
    settings["test_tasks"] = max(config.test_tasks, 1)
    data = EpisodicDataModule(**settings)
    data.setup()
    module = MetaNASModule.load_from_checkpoint(config.ckpt_path, map_location="cpu", weights_only=True)
    steps = module.meta.eval_inner_steps
    score = Scorer.on_tasks(module.adapter, first_tasks(data.task_dataset("val"), config.tasks_per_score), steps)
    meta_test = Scorer.on_tasks(module.adapter, first_tasks(data.task_dataset("test"), config.test_tasks), steps)

    started = time.perf_counter()
    runs = []
    for seed in config.seeds:
        for strategy in STRATEGIES:
            evolution = EvolutionConfig(
                population_size=config.population_size, offspring=config.offspring,
                pool_size=config.pool_size, selection="aging", rescore_population=False,
                strategy=strategy, predictor=PredictorConfig(min_archive=config.min_archive),
            )
            result = run_search(module.space, evolution, seed, config.generations, score)
            result.update(seed=seed, strategy=strategy, test_acc=meta_test([result["best_arch"]])[0])
            runs.append(result)
            print(
                f"seed {seed} {strategy:9s}: best score {result['best_score']:.4f} after "
                f"{result['real_scorings']} real scorings, meta-test {100 * result['test_acc']:.2f}% "
                f"({result['best_arch']})", flush=True,
            )

    print(f"\n{len(score.accuracies)} distinct architectures scored, {time.perf_counter() - started:.0f} s")
    print(f"{data.ways}-way {data.shots}-shot, checkpoint {config.ckpt_path}, seeds {config.seeds}\n")
    print("| search | real scorings | best score (mean ± std) | meta-test acc. of its best (mean ± std) | per seed: best score / meta-test |")
    print("| --- | --- | --- | --- | --- |")
    summary = {}
    for strategy in STRATEGIES:
        mine = [r for r in runs if r["strategy"] == strategy]
        best = [r["best_score"] for r in mine]
        acc = [r["test_acc"] for r in mine]
        summary[strategy] = {"best_score": statistics.mean(best), "test_acc": statistics.mean(acc)}
        per_seed = ", ".join(f"{100 * b:.1f} / {100 * a:.1f}" for b, a in zip(best, acc))
        print(
            f"| {strategy} | {mine[0]['real_scorings']} | {100 * statistics.mean(best):.2f} ± "
            f"{100 * statistics.stdev(best) if len(best) > 1 else 0:.2f} | "
            f"{100 * statistics.mean(acc):.2f} ± {100 * statistics.stdev(acc) if len(acc) > 1 else 0:.2f} | {per_seed} |"
        )
    if config.out:
        for r in runs:
            r["best_arch"] = r["best_arch"].to_dict()
        Path(config.out).write_text(json.dumps({"args": vars(config), "runs": runs, "summary": summary}, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
