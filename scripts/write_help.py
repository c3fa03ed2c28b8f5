"""Write docs/train_help.txt: train.py's --help as the live parser prints it (at 100 columns),
followed by the search's fields (--search.help), so that `python train.py --help` can answer
without importing Lightning and shows every option.

    .venv/bin/python scripts/write_help.py
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def live_help() -> str:
    env = dict(os.environ, LIGHTNING_METANAS_LIVE_HELP="1", COLUMNS="100", PYTHONWARNINGS="ignore")

    def run(*args: str) -> str:
        return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True).stdout

    search = run("--search.help", "SearchConfig")
    return run("--help") + "\n" + search[search.index("Help for --search.help"):]


if __name__ == "__main__":
    (ROOT / "docs" / "train_help.txt").write_text(live_help())
    print(f"wrote {ROOT / 'docs' / 'train_help.txt'}")
