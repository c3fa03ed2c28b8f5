"""The four-setting table of RESULTS.md from the runs of ``bench/results_table.sh``.

    .venv/bin/python bench/results_table.py

Reads the newest ``runs/results_<setting>_<arm>[_seedN]/version_N/test_result.json`` of each
setting, arm and seed (seed 0 from ``bench/results_table.sh``, further seeds from
``bench/results_seed.sh``) and ``runs/results_logs/walltimes.txt``; prints one markdown row per
setting and seed, the published figures marked as published.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_metanas.search_space import Architecture  # noqa: E402

SETTINGS = {  # setting: (label, MAML published, T-NAS++ published)
    "5w1s": ("5-way 1-shot", "98.7", "99.55"),
    "5w5s": ("5-way 5-shot", "99.9", "99.95"),
    "20w1s": ("20-way 1-shot", "95.8", "—"),
    "20w5s": ("20-way 5-shot", "98.9", "—"),
}


def newest(name: str) -> Path | None:
    versions = sorted((ROOT / "runs" / name).glob("version_*/test_result.json"), key=lambda p: p.stat().st_mtime)
    return versions[-1] if versions else None


def walltimes() -> dict[str, int]:
    path = ROOT / "runs" / "results_logs" / "walltimes.txt"
    times = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        parts = line.split()
        if len(parts) == 4 and parts[2] == "rc=0":
            times[f"{parts[0]}_{parts[1]}"] = int(parts[3].split("=")[1])
    return times


def main() -> int:
    times = walltimes()
    print("| setting | searched architecture (this project) | Conv-4 (this project) | MAML (**published**) | T-NAS++ (**published**) |")
    print("| --- | --- | --- | --- | --- |")
    notes = []
    for setting, (label, maml, tnas) in SETTINGS.items():
        further = sorted({p.name.rsplit("_", 1)[1] for p in (ROOT / "runs").glob(f"results_{setting}_*_seed*")})
        for suffix in ["", *(f"_{s}" for s in further)]:
            cells = []
            for arm in ("search", "conv4"):
                result = newest(f"results_{setting}_{arm}{suffix}")
                if result is None:
                    cells.append("not run")
                    continue
                r = json.loads(result.read_text())
                wall = times.get(f"{setting}_{arm}{suffix}")
                minutes = f", {wall / 60:.0f} min" if wall else ""
                cells.append(f"{100 * r['acc']:.2f} ± {100 * r['acc_ci95']:.2f}{minutes}")
                seed_label = f" (seed {suffix[5:]})" if suffix else ""
                notes.append(f"- {label}{seed_label}, {arm}: `{Architecture.of(r['arch'])}`, {r['tasks']} test tasks, {result.parent.relative_to(ROOT)}")
            seed = f" (seed {suffix[5:]})" if suffix else " (seed 0)"
            published = (maml, tnas) if not suffix else ("", "")
            print(f"| {label}{seed} | {cells[0]} | {cells[1]} | {published[0]} | {published[1]} |")
    print()
    print("\n".join(notes))
    alone = [(label, newest(f"results_{setting}_alone")) for setting, (label, _, _) in SETTINGS.items()]
    if any(result for _, result in alone):
        print("\nThe searched architecture meta-trained alone (train_arch=best_arch.json), same budget:\n")
        print("| setting | searched architecture alone | run |")
        print("| --- | --- | --- |")
        for label, result in alone:
            if result is not None:
                r = json.loads(result.read_text())
                print(f"| {label} | {100 * r['acc']:.2f} ± {100 * r['acc_ci95']:.2f} | {result.parent.relative_to(ROOT)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
