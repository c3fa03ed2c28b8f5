"""The ground truth of ``bench/ground_truth.py`` as a markdown table, best first.

    .venv/bin/python bench/ground_truth_table.py [bench/ground_truth/omniglot_5w1s.json]
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else ROOT / "bench/ground_truth/omniglot_5w1s.json"
    entries = json.loads(path.read_text())
    main_seed = [e for e in entries if e.get("seed", 0) == 0]
    reference = next((e for e in main_seed if e["group"] == "reference"), None)
    print("| rank | architecture | group | meta-test acc. | params | MFLOPs | minutes |")
    print("| ---: | --- | --- | --- | ---: | ---: | ---: |")
    for rank, e in enumerate(sorted(main_seed, key=lambda e: -e["acc"]), 1):
        mark = " **(Conv-4)**" if e is reference else ""
        print(f"| {rank} | `{e['label']}`{mark} | {e['group']} | {100 * e['acc']:.2f} ± {100 * e['ci95']:.2f} "
              f"| {e['params'] / 1000:.0f}k | {e['flops'] / 1e6:.1f} | {e['seconds'] / 60:.1f} |")
    accs = [e["acc"] for e in main_seed]
    if reference:
        better = sum(a > reference["acc"] for a in accs)
        print(f"\n{len(main_seed)} architectures, {main_seed[0]['tasks']} meta-training tasks each; "
              f"{better} above Conv-4 ({100 * reference['acc']:.2f}); spread (sd) {100 * statistics.pstdev(accs):.2f} points.")
    repeats = {}
    for e in entries:
        repeats.setdefault(e["label"], []).append((e.get("seed", 0), e["acc"]))
    for label, runs in repeats.items():
        if len(runs) > 1:
            shown = ", ".join(f"seed {s}: {100 * a:.2f}" for s, a in sorted(runs))
            print(f"- `{label}` over training seeds: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
