"""Is the size prior's strength fitted to the ground truth? An out-of-sample check (version 1).

Superseded by the version-2 ground truth, on which ``bench/ranking_table.py`` chooses the
strength on the validation column and reports the test column; kept because RESULTS.md's
version-1 section cites it, run on the version-1 files (``bench/ranking/v1``).

    .venv/bin/python bench/size_prior_cv.py

``--search.size_prior`` = 0.1 was chosen on the same 35 ground-truth architectures its Kendall
tau is reported on. This script chooses the strength on one random half of the architectures
and measures tau on the other half, many times, for every SuperNet ranked *without* the prior
(``bench/ranking/omniglot_5w1s_*.json`` whose ``size_prior`` is 0): once with the strength
fitted to that SuperNet's own half, once with it fitted to the *other* SuperNets' halves (out of
sample in both the architectures and the SuperNet). The scores are re-weighted with the search's
own ``scoring.size_weighted``; its ``largest`` is one constant for all, which leaves the order,
and tau, unchanged, so the largest of the ranked architectures stands in for the SuperNet's.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_metanas.metrics import kendall_tau  # noqa: E402
from lightning_metanas.scoring import size_weighted  # noqa: E402
from lightning_metanas.search_space import Architecture  # noqa: E402

STRENGTHS = [round(0.025 * i, 3) for i in range(17)]  # 0 ... 0.4


def weighted(scores: Sequence[float], params: Sequence[int], strength: float) -> list[float]:
    largest = max(params)
    return [size_weighted(s, p, largest, strength) for s, p in zip(scores, params)]


def tau_on(idx: Sequence[int], scores, truth, params, strength: float) -> float:
    return kendall_tau(weighted([scores[i] for i in idx], [params[i] for i in idx], strength),
                       [truth[i] for i in idx])


def cross_validate(methods: dict[str, tuple], splits: int = 200, seed: int = 0,
                   strengths: Sequence[float] = STRENGTHS) -> dict[str, dict]:
    """Per method (name -> (scores, truth, params), all over the same architectures in the same
    order), over ``splits`` random halvings: the strength with the best tau on half A (its own,
    and the mean over the other methods'; the smallest strength on ties, so "no prior" wins
    when nothing helps), and tau on half B without the prior and with each chosen strength."""
    n = len(next(iter(methods.values()))[0])
    rng = random.Random(seed)
    out = {name: {"own": [], "others": [], "tau_none": [], "tau_own": [], "tau_others": []} for name in methods}
    for _ in range(splits):
        order = list(range(n))
        rng.shuffle(order)
        a, b = order[: n // 2], order[n // 2:]
        on_a = {name: {s: tau_on(a, *data, s) for s in strengths} for name, data in methods.items()}
        for name, data in methods.items():
            others = [m for m in methods if m != name] or [name]
            own = max(strengths, key=lambda s: (on_a[name][s], -s))
            other = max(strengths, key=lambda s: (statistics.fmean(on_a[m][s] for m in others), -s))
            record = out[name]
            record["own"].append(own)
            record["others"].append(other)
            record["tau_none"].append(tau_on(b, *data, 0.0))
            record["tau_own"].append(tau_on(b, *data, own))
            record["tau_others"].append(tau_on(b, *data, other))
    return out


def load(ranking_dir: Path) -> dict[str, tuple]:
    """The SuperNets ranked without the prior, over the architectures they all share: one each
    (a SuperNet scored two ways, e.g. ``uniform`` and ``uniform_t100q5``, counts once, by the
    scoring the search uses: 100 tasks x 5 queries)."""
    results = [json.loads(p.read_text()) for p in sorted(ranking_dir.glob("omniglot_5w1s_*.json"))]
    results = [r for r in results if not r.get("size_prior")]
    by_training: dict[str, dict] = {}
    for r in results:  # one per trained SuperNet
        key = r.get("train_command") or r["method"]
        if key not in by_training or (r.get("score_tasks"), r.get("score_queries") or 1) > (
                by_training[key].get("score_tasks"), by_training[key].get("score_queries") or 1):
            by_training[key] = r
    results = list(by_training.values())
    truth = {Architecture.from_dict(e["arch"]): e
             for e in json.loads((ROOT / results[0]["ground_truth"]).read_text()) if e.get("seed", 0) == 0}
    keys = sorted(set.intersection(*({Architecture.from_dict(e["arch"]) for e in r["entries"]} for r in results)), key=str)
    methods = {}
    for r in results:
        by_key = {Architecture.from_dict(e["arch"]): e for e in r["entries"]}
        methods[r["method"]] = ([by_key[k]["supernet_score"] for k in keys],
                                [truth[k]["acc"] for k in keys], [truth[k]["params"] for k in keys])
    return methods


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranking_dir", type=Path, default=ROOT / "bench" / "ranking" / "v1")
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = load(args.ranking_dir)
    result = cross_validate(methods, args.splits, args.seed)
    n = len(next(iter(methods.values()))[0])

    def med(v):
        return f"{statistics.median(v):.3f}"

    print(f"{args.splits} random halvings of {n} architectures; strength chosen from "
          f"{STRENGTHS[0]}-{STRENGTHS[-1]} on half A, tau measured on half B (median over halvings)\n")
    print("| SuperNet | strength chosen on its own half A (median, range) | chosen on the other SuperNets' half A | "
          "tau on half B: no prior | with its own choice | with the others' choice | halvings where the others' choice beats no prior |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in sorted(result.items(), key=lambda kv: statistics.median(kv[1]["tau_none"])):
        wins = sum(o > z for o, z in zip(r["tau_others"], r["tau_none"])) / len(r["tau_none"])
        print(f"| `{name}` | {med(r['own'])} ({min(r['own'])}-{max(r['own'])}) | {med(r['others'])} "
              f"({min(r['others'])}-{max(r['others'])}) | {med(r['tau_none'])} | {med(r['tau_own'])} | "
              f"{med(r['tau_others'])} | {100 * wins:.0f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
