"""The adapted model as a product: saved, loaded in a fresh process, classifying one image at a
time, exported to TorchScript and ONNX, and refusing a damaged or hostile file in one line.

Tolerances: an image alone vs inside a batch, 1e-6 (the same arithmetic, only the batch
dimension differs); ONNX Runtime and TorchScript vs the PyTorch module, 1e-5 (other kernels).
"""
import json
import re
import subprocess
import sys

import pytest
import torch

from lightning_metanas.adapted_model import AdaptedModel, ModelFileError, Preprocessing
from lightning_metanas.adaptation import FinetuneConfig, adapt
from lightning_metanas.checkpoints import CheckpointError
from lightning_metanas.data.folder import load_image_folder, split_image_folder
from lightning_metanas.errors import run_main
from lightning_metanas.export import export
from lightning_metanas.meta_config import MetaConfig
from lightning_metanas.search_space import Architecture, SearchSpace
from lightning_metanas.supernet import SuperNet
from tests.helpers import write_shapes
from tests.test_train import ROOT

SPACE = SearchSpace(widths=(8, 16), depths=(2, 3))
ARCH = Architecture(("conv3x3", "max_pool3x3", "sep_conv3x3"), (16, 8, 16))
PRE = Preprocessing(image_size=28, channels=1, invert=False, mean=[0.1], std=[0.3])


def _adapted(tmp_path_factory, task_norm, last_norm="task"):
    root = tmp_path_factory.mktemp("task")
    folder = write_shapes(root / "shapes", per_class=6)
    torch.manual_seed(0)
    supernet = SuperNet(SPACE, ways=4, task_norm=task_norm, last_norm=last_norm)
    with torch.no_grad():  # a blend other than one half, so a file that lost it would show
        for name, p in supernet.named_parameters():
            if name.endswith("norm_blend"):
                p.copy_(torch.tensor([0.2, -0.4]))
    images = load_image_folder(folder, image_size=28, channels=1, mean=PRE.mean, std=PRE.std)
    train, val = split_image_folder(images, 0.25, seed=0)
    result = adapt(supernet, MetaConfig(), train, val, PRE, tuning=FinetuneConfig(steps=30), arch=ARCH)
    return result, val, folder


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A model adapted to four drawn shapes from a seeded SuperNet, and its held-out images."""
    return _adapted(tmp_path_factory, task_norm=False)


@pytest.fixture(scope="module")
def adapted_task_norm(tmp_path_factory):
    """The same from a SuperNet with TaskNorm-I layers (``model.meta.norm_layer=task_norm_i``)."""
    return _adapted(tmp_path_factory, task_norm=True)


@pytest.fixture(scope="module")
def adapted_last_layer(tmp_path_factory):
    """The same from a SuperNet whose last layer normalises each image alone
    (``model.meta.last_norm=layer``)."""
    return _adapted(tmp_path_factory, task_norm=False, last_norm="layer")


BOTH = pytest.mark.parametrize("which", ["adapted", "adapted_task_norm", "adapted_last_layer"])


@BOTH
def test_one_image_alone_and_inside_a_mixed_batch_give_the_same_logits(which, request):
    adapted = request.getfixturevalue(which)
    result, val, _ = adapted
    batch = result.model.logits(val.images, batch_size=64)
    alone = torch.cat([result.model.logits(val.images[i : i + 1]) for i in range(len(val.labels))])
    shuffled = result.model.logits(val.images.flip(0)).flip(0)
    assert torch.allclose(alone, batch, atol=1e-6) and torch.allclose(shuffled, batch, atol=1e-6)
    assert len(set(val.labels.tolist())) == 4  # the batch mixes every class


@BOTH
def test_saved_model_loads_in_a_fresh_process_with_the_same_logits(which, request, tmp_path):
    adapted = request.getfixturevalue(which)
    result, val, _ = adapted
    path = result.model.save(tmp_path / "model.pt")
    torch.save(val.images, tmp_path / "images.pt")
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[1])\n"
        "from lightning_metanas.adapted_model import AdaptedModel\n"
        "m = AdaptedModel.load(sys.argv[2])\n"
        "torch.save(m.logits(torch.load(sys.argv[3], weights_only=True), batch_size=1), sys.argv[4])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(ROOT), str(path), str(tmp_path / "images.pt"),
                    str(tmp_path / "out.pt")], check=True, cwd=tmp_path)
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(loaded, result.model.logits(val.images, batch_size=1))
    again = AdaptedModel.load(path)
    assert again.class_names == result.model.class_names == ["disc", "frame", "hbars", "vbars"]
    assert again.preprocessing == PRE and again.arch == ARCH
    assert again.net.task_norm == (which == "adapted_task_norm")
    assert again.net.last_norm == ("layer" if which == "adapted_last_layer" else "task")
    norms = [type(layer.norm).__name__ for layer in again.net.layers]
    assert norms[-1] == ("GroupNorm" if which == "adapted_last_layer" else norms[0])


@BOTH
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exports_equal_the_plain_module_on_a_batch_and_on_one_image(which, request, tmp_path, fmt):
    adapted = request.getfixturevalue(which)
    result, val, _ = adapted
    net = result.model.net
    path = export(net, tmp_path / f"model.{fmt}", fmt)
    with torch.no_grad():
        expected = net(val.images)
    for x, want in ((val.images, expected), (val.images[:1], expected[:1])):
        if fmt == "torchscript":
            got = torch.jit.load(str(path))(x).detach()
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), (fmt, (got - want).abs().max())


def _damaged(tmp_path, result, change):
    data = torch.load(result.model.save(tmp_path / "good.pt"), weights_only=True)
    change(data)
    torch.save(data, tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("class_names"), "lacks class_names"),
    (lambda d: d["state_dict"].pop("head.weight"), 'Missing key(s) in state_dict: "head.weight"'),
    (lambda d: d["state_dict"].__setitem__("head.weight", torch.zeros(4, 3)), "size mismatch for head.weight"),
    (lambda d: d.__setitem__("format", "something else"), "is not a model saved by adapt.py --save"),
    (lambda d: d["arch"].__setitem__("ops", ["conv9x9", "skip", "skip"]), "unreadable model description"),
])
def test_a_damaged_model_file_is_refused_in_one_line(adapted, tmp_path, capsys, change, message):
    bad = _damaged(tmp_path, adapted[0], change)
    with pytest.raises(ModelFileError, match=re.escape(message)) as err:
        AdaptedModel.load(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_a_pickle_payload_is_refused_and_nothing_in_it_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "lightning_metanas.adapted_model/1", "arch": Payload()}, evil)
    with pytest.raises(CheckpointError, match="it holds a pickled io.open, which only running code could rebuild: "
                                              "refused, nothing in it was executed"):
        AdaptedModel.load(evil)
    assert not marker.exists()


def test_predict_names_the_undecodable_file_predicts_the_rest_and_fails(adapted, tmp_path, capsys):
    import predict

    result, _, _ = adapted
    model = result.model.save(tmp_path / "model.pt")
    folder = write_shapes(tmp_path / "new", per_class=2)
    (folder / "disc" / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "predictions.json"
    assert predict.cli_main(["--model", str(model), str(folder), "--out", str(out), "--top_k", "2"]) == 1
    rows = json.loads(out.read_text())
    assert len(rows) == 9 and [r["file"] for r in rows if "error" in r] == [str(folder / "disc" / "bad.png")]
    assert all(len(r["top_k"]) == 2 and r["prediction"] in result.model.class_names for r in rows if "error" not in r)
    err = capsys.readouterr().err
    assert err.strip().endswith(f"1 of 9 file(s) could not be read: {folder / 'disc' / 'bad.png'}")
    # any batch size: the same predictions and probabilities
    csv_1, csv_7 = tmp_path / "b1.csv", tmp_path / "b7.csv"
    for batch, path in (("1", csv_1), ("7", csv_7)):
        predict.cli_main(["--model", str(model), str(folder), "--out", str(path), "--batch_size", batch, "--top_k", "2"])
    assert csv_1.read_text() == csv_7.read_text() and csv_1.read_text().startswith("file,prediction,probability")


def test_predict_refuses_a_missing_input_or_a_bad_model_in_one_line(adapted, tmp_path, capsys):
    import predict

    model = adapted[0].model.save(tmp_path / "model.pt")
    assert run_main(lambda: predict.main(["--model", str(model), str(tmp_path / "nowhere")])) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere'}: no such file or folder\n"
    assert run_main(lambda: predict.main(["--model", str(tmp_path / "none.pt"), str(tmp_path)])) == 1
    assert capsys.readouterr().err == f"error: --model {tmp_path / 'none.pt'}: no such file\n"
