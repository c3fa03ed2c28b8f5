#!/usr/bin/env bash
# The README's path for a new user, run from a fresh clone of this repository: `make train`,
# then a new task adapted and saved (`adapt.py --save`), new images classified one at a time
# (`predict.py`), and the ONNX and TorchScript exports. The new task is 5 characters of the
# shipped Omniglot's test split (never meta-trained on): 5 drawings each to adapt on, the other
# 15 of each as "new images", named <class>__<file> so that the predictions can be checked.
#
#     bash scripts/readme_walkthrough.sh [WORKDIR]      (default /tmp/metanas_walkthrough)
#
# Prints each step's wall time and, at the end, how many new images were classified right and
# whether batch 1 and batch 64 gave the same classes. Installs into the clone's own .venv.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
W=${1:-/tmp/metanas_walkthrough}
rm -rf "$W"; mkdir -p "$W"
git clone -q "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" "$W/p"
cd "$W/p"; git log -1 --oneline
exec 3>&1  # the step times go to the script's output even where a step's own output is redirected
t() { local s; s=$(date +%s); "$@"; echo "[walkthrough] $(( $(date +%s) - s )) s: $*" >&3; }
t make install > "$W/install.log" 2>&1
t make train > "$W/train.log" 2>&1; grep "meta-test:" "$W/train.log"
.venv/bin/python scripts/omniglot_to_folders.py --out "$W/folders" > /dev/null
mkdir -p my_task new_images
for c in $(ls "$W/folders/test" | head -5); do
  mkdir -p "my_task/$c"
  ls "$W/folders/test/$c" | head -5 | while read -r f; do cp "$W/folders/test/$c/$f" "my_task/$c/"; done
  ls "$W/folders/test/$c" | tail -n +6 | while read -r f; do cp "$W/folders/test/$c/$f" "new_images/${c}__$f"; done
done
RUN=runs/quick/version_0/checkpoints
t .venv/bin/python adapt.py --ckpt_path $RUN/last.ckpt --data.root my_task/ --save my_task.model.pt --out my_task.json
t .venv/bin/python predict.py --model my_task.model.pt new_images/ --top_k 3 --out predictions.csv --batch_size 1 > /dev/null
.venv/bin/python predict.py --model my_task.model.pt new_images/ --top_k 3 --out predictions64.csv --batch_size 64 > /dev/null
t .venv/bin/python -m lightning_metanas.export --model my_task.model.pt --format onnx --out my_task.onnx
t .venv/bin/python -m lightning_metanas.export --model my_task.model.pt --format torchscript --out my_task.ts
ls -l my_task.model.pt my_task.onnx my_task.ts
.venv/bin/python - <<'PY'
import csv

import onnxruntime

rows = list(csv.DictReader(open("predictions.csv")))
rows64 = list(csv.DictReader(open("predictions64.csv")))
right = sum(r["prediction"] == r["file"].split("/")[-1].split("__")[0] for r in rows)
print(f"[walkthrough] predict.py, one image at a time: {right} of {len(rows)} new images right")
print("[walkthrough] --batch_size 1 and 64 give the same classes:",
      [r["prediction"] for r in rows] == [r["prediction"] for r in rows64])
session = onnxruntime.InferenceSession("my_task.onnx")
print("[walkthrough] ONNX input:", [(i.name, i.shape) for i in session.get_inputs()])
PY
