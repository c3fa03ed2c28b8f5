"""The version-2 ground truth of ``bench/ground_truth.py`` as a markdown table, best first by
validation accuracy (the column every choice is made on), with the test columns beside it.

    .venv/bin/python bench/ground_truth_table.py [bench/ground_truth/omniglot_5w1s_v2.json]

Also: how the seeds agree, what one-image inference costs, which runs had their best
validation at epoch 0 or 1, and how many architectures each budget holds.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else ROOT / "bench/ground_truth/omniglot_5w1s_v2.json"
    entries = json.loads(path.read_text())
    done = [e for e in entries if len(e["runs"]) >= 2]
    print("| rank (val) | architecture | group | validation | test | test, one image at a time | seed 0 / 1 (test) "
          "| params | MFLOPs | latency vs Conv-4 | budgets |")
    print("| ---: | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |")
    for rank, e in enumerate(sorted(done, key=lambda e: -e["val_acc"]), 1):
        seeds = " / ".join(f"{100 * r['test_acc']:.2f}" for r in e["runs"])
        print(f"| {rank} | `{e['label']}` | {e['group']} | {100 * e['val_acc']:.2f} | {100 * e['test_acc']:.2f} | "
              f"{100 * e['test_acc_inductive']:.2f} | {seeds} | {e['params'] / 1000:.1f}k | {e['flops'] / 1e6:.2f} | "
              f"{e['latency_vs_conv4']:.2f} | {', '.join(e['budgets'])} |")
    if not done:
        return 0
    gaps = [e["test_acc"] - e["test_acc_inductive"] for e in done]
    seed_gaps = [abs(e["runs"][0]["test_acc"] - e["runs"][1]["test_acc"]) for e in done]
    early = [(e["label"], r["seed"], r["best_epoch"], r.get("val_curve")) for e in entries for r in e["runs"]
             if r["best_epoch"] <= 1]
    machines = sorted({m for e in entries for m in e["machine"]})
    print(f"\n{len(done)} architectures with both seeds ({len(entries)} started), "
          f"{done[0]['tasks']} meta-training tasks each, on {', '.join(machines)}.")
    print(f"- One image at a time costs {100 * statistics.fmean(gaps):.2f} points of test accuracy on average "
          f"(median {100 * statistics.median(gaps):.2f}, range {100 * min(gaps):.2f} to {100 * max(gaps):.2f}).")
    print(f"- The two training seeds differ by {100 * statistics.median(seed_gaps):.2f} points (median |seed 0 - seed 1|, "
          f"test), up to {100 * max(seed_gaps):.2f}.")
    for budget in sorted({b for e in done for b in e["budgets"]}):
        members = [e for e in done if budget in e["budgets"]]
        accs = [e["test_acc"] for e in members]
        print(f"- {budget}: {len(members)} architectures, test accuracy {100 * min(accs):.2f} to {100 * max(accs):.2f}.")
    if early:
        print(f"- {len(early)} runs had their best validation at epoch 0 or 1 of 6:")
        for label, seed, epoch, curve in early:
            shown = ", ".join(f"{100 * v:.1f}" for v in curve or [])
            print(f"  - `{label}` seed {seed}: epoch {epoch}; validation by epoch: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
