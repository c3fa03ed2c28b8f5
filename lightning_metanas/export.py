"""Exporting a network to run without this project: TorchScript and ONNX, and plain PyTorch.

Two sources:

* an adapted model (``adapt.py --save``): its BatchNorm statistics are fixed, so the export is
  a function of one image at a time, with a free batch axis, in every format;
* a training checkpoint: the architecture it evaluates (after a search, the search's best, the
  one in ``best_arch.json``) with its meta-weights, for users who fine-tune elsewhere. Its BatchNorm layers normalise with the
  statistics of the batch they are given (the meta-training convention: nothing to fix them
  with exists before a task is seen), which TorchScript and plain PyTorch express; ONNX
  (legacy exporter) cannot with a free batch axis, so ONNX takes an adapted model.

    python -m lightning_metanas.export --model my_task.model.pt --format onnx --out my_task.onnx
    python -m lightning_metanas.export --model my_task.model.pt --format torchscript --out my_task.ts
    python -m lightning_metanas.export --ckpt_path runs/.../last.ckpt --format pytorch --out meta_net.pt

``pytorch`` writes ``{"arch": ..., "state_dict": ...}``: ``StandaloneNet`` (this package) or any
copy of its 40 lines rebuilds the module from it with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Literal, Optional

import torch
from jsonargparse import ArgumentParser

from lightning_metanas.adapted_model import AdaptedModel
from lightning_metanas.errors import SettingsError, run_main
from lightning_metanas.standalone import StandaloneNet

Format = Literal["torchscript", "onnx", "pytorch"]


def batch_statistics(net: StandaloneNet) -> StandaloneNet:
    """``net`` with every BatchNorm normalising by the statistics of its input batch, in eval
    mode too (the meta-weights' convention)."""
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.track_running_stats, module.running_mean, module.running_var = False, None, None
            module.num_batches_tracked = None
    return net


def from_checkpoint(ckpt_path: str) -> StandaloneNet:
    """The checkpoint's evaluated architecture with its meta-weights."""
    from lightning_metanas.module import MetaNASModule

    module = MetaNASModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    arch = module.evaluated_architecture()
    return batch_statistics(StandaloneNet.from_supernet(module.supernet, arch, int(module.hparams.image_size))).eval()


def export(net: StandaloneNet, path: str | Path, fmt: Format, fixed_statistics: bool = True) -> Path:
    """Write ``net`` (in eval mode) to ``path`` as ``fmt``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    example = torch.zeros(2, net.in_channels, net.image_size, net.image_size)
    if fmt == "pytorch":
        torch.save({"arch": net.arch.to_dict(), "in_channels": net.in_channels, "image_size": net.image_size,
                    "ways": net.ways, "task_norm": net.task_norm, "last_norm": net.last_norm,
                    "state_dict": net.state_dict()}, path)
    elif fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            # GroupNorm (a layer-normalised last layer) checks its input size in Python: a
            # check for one value per group, which a traced network never meets again
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="torch.nn.functional")
            torch.jit.trace(net, example).save(str(path))
    elif fmt == "onnx":
        if not fixed_statistics:
            raise SettingsError("ONNX needs fixed BatchNorm statistics: export an adapted model (adapt.py --save), "
                                "or use --format torchscript / pytorch for meta-weights")
        try:
            import onnx  # noqa: F401  (the exporter needs it)
        except ImportError:
            raise SettingsError("--format onnx needs the onnx package: pip install 'lightning-metanas[export]'") from None
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter announces its successor
            torch.onnx.export(net, example, str(path), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
                              opset_version=17)
    else:
        raise SettingsError(f"--format must be torchscript, onnx or pytorch, got {fmt!r}")
    return path


def main(argv: Optional[list[str]] = None) -> Path:
    parser = ArgumentParser(prog="python -m lightning_metanas.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Optional[str], default=None, help="A model saved by adapt.py --save.")
    parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                        help="A training checkpoint: export its evaluated architecture with the meta-weights.")
    parser.add_argument("--format", type=Format, default="onnx", help="torchscript, onnx or pytorch.")
    parser.add_argument("--out", type=str, required=True, help="The file to write.")
    cli = parser.parse_args(argv)
    if (cli.model is None) == (cli.ckpt_path is None):
        raise SettingsError("give one of --model (an adapted model) or --ckpt_path (a training checkpoint)")
    if cli.model is not None:
        net, fixed = AdaptedModel.load(cli.model).net, True
    else:
        from lightning_metanas.checkpoints import read_checkpoint

        read_checkpoint(cli.ckpt_path)  # a one-line refusal of a bad file before anything else
        net, fixed = from_checkpoint(cli.ckpt_path), False
    path = export(net, cli.out, cli.format, fixed)
    print(f"exported {net.arch} to {path} ({cli.format})")
    return path


if __name__ == "__main__":
    sys.exit(run_main(lambda: main()))
