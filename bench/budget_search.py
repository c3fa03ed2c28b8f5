"""Search under a cost budget: the evolutionary search on one SuperNet, within each budget of
``bench/ground_truth.BUDGETS`` (and with none), three seeds each; and random search
(``strategy=random``: uniform samples within the budget, the same number of real scorings on the
same SuperNet and tasks) as its baseline.

    .venv/bin/python bench/budget_search.py --training fair --size_prior 0.1
    .venv/bin/python bench/ground_truth.py --only $(.venv/bin/python bench/budget_search.py --labels)
    .venv/bin/python bench/budget_table.py

The SuperNet is ``bench/ranking.py``'s (meta-trained the way the configs' warm-up trains it, at
the ground truth's budget); the search is ``SearchConfig``'s defaults with the size prior chosen
on the validation column (``bench/ranking_table.py``) and the budget's bounds, scoring on the
first 100 validation tasks (5 query images per class), weights fixed. The latency bound is half
of Conv-4's one-image latency measured just before the search (a third is below the fastest
architecture of the space on these CPUs: ``bench/ground_truth.py``); while a latency-bounded
search runs, the other ``train.py`` processes of this machine are paused (SIGSTOP/SIGCONT), so
candidates are timed on a quiet machine. Each pick is then trained alone like every
ground-truth architecture (``ground_truth.py --only``), and ``bench/budget_table.py`` sets it
against the budget's zero-cost pick, largest network, random network and oracle.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, git_commit, load, others_paused, save  # noqa: E402
from bench.ground_truth import BUDGETS  # noqa: E402
from bench.ranking import validation_tasks  # noqa: E402
from lightning_metanas.costs import Budget, CostModel  # noqa: E402
from lightning_metanas.evolution import EvolutionarySearch  # noqa: E402
from lightning_metanas.latency import latency_ms  # noqa: E402
from lightning_metanas.module import MetaNASModule  # noqa: E402
from lightning_metanas.scoring import Scorer  # noqa: E402
from lightning_metanas.search_config import SearchConfig  # noqa: E402

OUT = ROOT / "bench/budget_search/omniglot_5w1s.json"


def budget_of(name: str, conv4_ms: float) -> Budget:
    spec = BUDGETS[name] if name != "none" else {}
    fields = {k: v for k, v in spec.items() if k != "latency_ratio"}
    if "latency_ratio" in spec:
        fields["max_latency_ms"] = round(spec["latency_ratio"] * conv4_ms, 4)
    return Budget(**fields)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--training", default="fair")
    parser.add_argument("--size_prior", type=float, default=None, help="default: the one chosen in bench/ranking/omniglot_5w1s_v2.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", default=["none", *BUDGETS])
    parser.add_argument("--strategies", nargs="+", default=["evolution", "random"], choices=["evolution", "random"])
    parser.add_argument("--runs", default=str(ROOT / "runs/ranking_v2"))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--labels", action="store_true",
                        help="print the picks' labels of --strategies (to train them) and stop")
    args = parser.parse_args(argv)
    out = Path(args.out)
    records = load(out) or []
    if args.labels:
        print(" ".join(dict.fromkeys(r["label"] for r in records if r.get("strategy", "evolution") in args.strategies)))
        return 0
    prior = args.size_prior
    if prior is None:
        chosen = load(ROOT / "bench/ranking/omniglot_5w1s_v2.json")["chosen_method"]
        prior = float(chosen.rsplit(" ", 1)[1])
    ckpt = Path(args.runs) / f"supernet_{args.training}" / "version_0" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        parser.error(f"no SuperNet at {ckpt}: run bench/ranking.py --training {args.training} first")
    model = MetaNASModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    tasks = validation_tasks(ckpt, 0)
    scorer = Scorer.on_tasks(model.adapter, tasks, model.meta.eval_inner_steps, prior)
    hp = model.hparams
    for name in args.budgets:
        timed = name != "none" and "latency_ratio" in BUDGETS[name]
        with others_paused(timed):
            conv4_ms = statistics.median(latency_ms(model.space.reference()) for _ in range(5)) if timed else None
            budget = budget_of(name, conv4_ms or 0.0)
            costs = CostModel(model.space, hp.ways, hp.image_channels, hp.image_size, budget, supernet=model.supernet)
            costs.check_feasible()
            for strategy, seed in [(s, seed) for s in args.strategies for seed in args.seeds]:
                if any(r["budget"] == name and r["seed"] == seed and r["size_prior"] == prior
                       and r["training"] == args.training and r.get("strategy", "evolution") == strategy
                       for r in records):
                    continue
                start = time.time()
                config = SearchConfig(seed=seed, size_prior=prior, max_params=budget.max_params, strategy=strategy,
                                      max_flops=budget.max_flops, max_latency_ms=budget.max_latency_ms)
                search = EvolutionarySearch(model.space, config, fits=costs.fits)
                search.run(scorer)
                best = search.best()
                records.append({
                    "budget": name, "strategy": strategy, "bounds": budget.as_dict(), "conv4_latency_ms": conv4_ms, "seed": seed,
                    "training": args.training, "size_prior": prior, "label": str(best.arch), "arch": best.arch.to_dict(),
                    "score": best.score, "accuracy": search.accuracies[best.arch], **costs.of(best.arch, latency=timed),
                    "real_scorings": len(search.archive), "generations": search.generation,
                    "all_within_budget": all(costs.fits(a) for a in search.archive),
                    "seconds": round(time.time() - start, 1), "commit": git_commit(), "machine": cpu_model(),
                    "command": "python bench/budget_search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                })
                save(out, records)
                print(f"{name:14s} {strategy:9s} seed {seed}: {best.arch} score {best.score:.4f} "
                      f"({len(search.archive)} scored, {time.time() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
