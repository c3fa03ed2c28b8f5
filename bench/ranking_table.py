"""The ranking-fidelity table of BENCHMARKS.md from ``bench/ranking/omniglot_5w1s_*.json``.

    .venv/bin/python bench/ranking_table.py

One row per method (SuperNet training + scoring), then the zero-cost proxies every SuperNet
should beat (parameter count, FLOPs, depth): Kendall tau and Spearman rho against the
stand-alone ground truth, tau within each depth (pairs of equal depth only: the part of the
order that depth alone cannot give), the ground-truth rank of the top-1, the top-5 overlap, the
noise of one score against the spread between architectures, and what the evolutionary search
picked on that SuperNet (its stand-alone accuracy and the share of the ground truth above it).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_metanas.ranking import kendall_tau, rank_agreement  # noqa: E402

PROXIES = {
    "parameters": lambda e: e["params"],
    "FLOPs": lambda e: e["flops"],
    "depth (ties by parameters)": lambda e: len(e["arch"]["ops"]) + e["params"] * 1e-9,
}


def within_depth_tau(scores: list[float], truth: list[float], depths: list[int]) -> float:
    """Kendall tau over the pairs of equal depth, each depth weighted by its pairs."""
    total, pairs = 0.0, 0
    for depth in sorted(set(depths)):
        idx = [i for i, d in enumerate(depths) if d == depth]
        if len(idx) < 2:
            continue
        n = len(idx) * (len(idx) - 1) // 2
        total += n * kendall_tau([scores[i] for i in idx], [truth[i] for i in idx])
        pairs += n
    return total / pairs


def known(truth_file: Path) -> dict[str, float]:
    """Stand-alone accuracy by label of every architecture trained so far (the fixed set and
    the searches' picks trained later, group ``extra``), read now rather than when the ranking
    was scored."""
    return {e["label"]: e["acc"] for e in json.loads(truth_file.read_text()) if e.get("seed", 0) == 0}


def pick_cell(pick: dict, accs: dict[str, float], truth: list[float]) -> str:
    """A search's pick: its stand-alone accuracy and the share of the ranked set above it."""
    acc = accs.get(pick["label"])
    if acc is None:
        return f"`{pick['label']}`: not trained alone yet"
    return f"`{pick['label']}`: {100 * acc:.2f} ({100 * sum(t > acc for t in truth) / len(truth):.0f}% above)"


def picks_mean(picks: list[dict], accs: dict[str, float]) -> str:
    """Mean stand-alone accuracy of a method's picks: what its searches would deliver; "—"
    until every pick is trained alone."""
    if not picks or any(p["label"] not in accs for p in picks):
        return "—"
    return f"{100 * sum(accs[p['label']] for p in picks) / len(picks):.2f}"


def row(name: str, scores: list[float], truth: list[float], depths: list[int], extra: list[str]) -> str:
    agreement = rank_agreement(scores, truth)
    return (f"| {name} | {agreement['kendall_tau']:.3f} | {agreement['spearman_rho']:.3f} | "
            f"{within_depth_tau(scores, truth, depths):.3f} | {agreement['top1_ground_truth_rank']} | "
            f"{agreement['top5_overlap']} | " + " | ".join(extra) + " |")


def main() -> int:
    header = ("| method | Kendall tau | Spearman rho | tau within depth | GT rank of top-1 | top-5 overlap | "
              "score sd over re-drawn tasks / between architectures | search picks: mean stand-alone acc. | search picks: stand-alone acc. (share of GT above) |")
    print(header)
    print("| --- " * (header.count("|") - 1) + "|")
    truth_file = None
    # weakest first, so the table reads as the levers were added
    for path in sorted((ROOT / "bench" / "ranking").glob("omniglot_5w1s_*.json"),
                       key=lambda p: json.loads(p.read_text())["kendall_tau"]):
        result = json.loads(path.read_text())
        truth_file = ROOT / result["ground_truth"]
        scores = [e["supernet_score"] for e in result["entries"]]
        truth = [e["stand_alone_acc"] for e in result["entries"]]
        depths = [len(e["arch"]["ops"]) for e in result["entries"]]
        noise = result["noise"]
        accs = known(ROOT / result["ground_truth"])
        picks = result.get("search_picks", [])
        print(row(f"`{result['method']}`", scores, truth, depths, [
            f"{100 * noise['score_sd_over_redraws']:.2f} / {100 * noise['score_sd_between_architectures']:.2f}",
            picks_mean(picks, accs), "; ".join(pick_cell(p, accs, truth) for p in picks) or "—"]))
    if truth_file is None:
        truth_file = ROOT / "bench/ground_truth/omniglot_5w1s.json"
    entries = [e for e in json.loads(truth_file.read_text()) if e.get("seed", 0) == 0 and e["group"] != "extra"]
    truth = [e["acc"] for e in entries]
    depths = [len(e["arch"]["ops"]) for e in entries]
    for name, proxy in PROXIES.items():
        print(row(f"proxy: {name}", [proxy(e) for e in entries], truth, depths, ["—", "—", "—"]))
    print(f"\n{len(entries)} architectures; ground truth {truth_file.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
