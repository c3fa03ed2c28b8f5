"""How fast an adapted model classifies: per-image latency and images per second at batch 1 and
64, one CPU thread, for the plain PyTorch module, its TorchScript export and its ONNX export
(ONNX Runtime), and the saved model's size on disk.

    .venv/bin/python bench/predict_speed.py --model my_task.model.pt
    .venv/bin/python bench/predict_speed.py --arch conv3x3@64-conv3x3@64-conv3x3@64-conv3x3@64

Timings are medians of repeated warm runs (``latency.median_ms``); while they run, the other
``train.py``/``eval.py`` processes of this machine are paused (SIGSTOP/SIGCONT), so they measure
the CPU, not its neighbours. ``--arch``: a model with random weights of that architecture (the
time does not depend on the weights). Writes ``bench/predict_speed/<label>.json``.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import cpu_model, git_commit, others_paused, save  # noqa: E402
from bench.ground_truth import parse  # noqa: E402
from lightning_metanas.adapted_model import AdaptedModel, Preprocessing  # noqa: E402
from lightning_metanas.export import export  # noqa: E402
from lightning_metanas.latency import median_ms, one_thread  # noqa: E402
from lightning_metanas.standalone import StandaloneNet  # noqa: E402


class OnnxRunner(torch.nn.Module):
    """An ONNX Runtime session on one thread, called like a module (numpy in, tensor out)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"images": x.numpy()})[0])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a model saved by adapt.py --save")
    parser.add_argument("--arch", default="conv3x3@64-conv3x3@64-conv3x3@64-conv3x3@64")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--no_pause", action="store_true", help="do not pause the other training processes")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = AdaptedModel.load(args.model)
            size = os.path.getsize(args.model)
        else:
            net = StandaloneNet(parse(args.arch), 1, 28, 5)
            model = AdaptedModel(net, [f"class {i}" for i in range(5)], Preprocessing(28, 1, True), {})
            size = os.path.getsize(model.save(Path(tmp) / "model.pt"))
        net = model.net.eval()
        channels_last = copy.deepcopy(net).to(memory_format=torch.channels_last)  # AdaptedModel.logits on CPU

        def plain(x: torch.Tensor) -> torch.Tensor:
            return channels_last(x.contiguous(memory_format=torch.channels_last))

        runners = {"pytorch": net, "pytorch, channels-last (predict.py)": plain,
                   "torchscript": torch.jit.load(str(export(net, Path(tmp) / "m.ts", "torchscript"))),
                   "onnxruntime": OnnxRunner(export(net, Path(tmp) / "m.onnx", "onnx"))}
        shape = (net.in_channels, net.image_size, net.image_size)
        rows = {}
        with others_paused(not args.no_pause), one_thread():
            for name, runner in runners.items():
                for batch in (1, 64):
                    ms = median_ms(runner, torch.randn(batch, *shape), warmup=20, repeats=args.repeats // (1 if batch == 1 else 4))
                    rows[f"{name}/batch{batch}"] = {"ms_per_batch": round(ms, 4), "ms_per_image": round(ms / batch, 4),
                                                    "images_per_s": round(1000 * batch / ms, 1)}
    label = str(model.arch)
    print(f"{label}: saved model {size / 1024:.1f} KiB on disk; one CPU thread, {cpu_model()}\n")
    print("| runtime | batch 1: ms per image | batch 1: images/s | batch 64: ms per image | batch 64: images/s |")
    print("|---|---|---|---|---|")
    for name in runners:
        one, many = rows[f"{name}/batch1"], rows[f"{name}/batch64"]
        print(f"| {name} | {one['ms_per_image']:.3f} | {one['images_per_s']:.0f} | {many['ms_per_image']:.4f} | {many['images_per_s']:.0f} |")
    out = Path(args.out) if args.out else ROOT / "bench/predict_speed" / f"{label.replace('@', '_')}.json"
    save(out, {"arch": label, "model_bytes": size, "rows": rows, "machine": cpu_model(), "commit": git_commit(),
               "paused_others": not args.no_pause,
               "command": "python bench/predict_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
