"""Adaptation on folders from site: the class-balanced and robust losses, the suspect-label
scores, the data summary (counts, imbalance, cross-class duplicates, files that do not decode),
the held-out confusion matrix, and adapt.py printing all of it for a folder with mislabelled
and imbalanced classes."""
import json
import random
import re
import shutil
from dataclasses import replace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightning_metanas.adaptation import FinetuneConfig, adapt
from lightning_metanas.adapted_model import Preprocessing
from lightning_metanas.data import DataError, LabelledImages, split_image_folder
from lightning_metanas.data_summary import decode_folder, split_with_indices, survey_folder
from lightning_metanas.errors import SettingsError, run_main
from lightning_metanas.finetune import TaskLoss, class_weights, finetune
from lightning_metanas.heldout import balanced_accuracy, confusion_matrix, lines, recall_per_class
from lightning_metanas.maml import TaskAdapter
from lightning_metanas.meta_config import MetaConfig
from lightning_metanas.module import MetaNASModule
from lightning_metanas.search_space import Architecture, SearchSpace
from lightning_metanas.supernet import SuperNet
from lightning_metanas.suspects import (MarginTrace, SuspectConfig, auroc, flagged, layered_prototype_scores, margins,
                                        precision_recall, prototype_scores)
from tests.helpers import draw, write_shapes
from tests.test_adapt import PLAIN, TINY, adapt_cli, finish, start, toy_task


# -- the losses ------------------------------------------------------------------------------
def test_the_class_balanced_loss_is_the_plain_loss_on_a_balanced_task():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(12, 4, generator=g), torch.arange(4).repeat(3)
    weights = class_weights(y, 4)
    assert weights.tolist() == [1.0, 1.0, 1.0, 1.0]
    plain = F.cross_entropy(logits, y)
    assert torch.equal(TaskLoss(balanced=True)(logits, y, weights), TaskLoss()(logits, y))
    assert TaskLoss(balanced=True)(logits, y, weights).item() == pytest.approx(plain.item(), abs=1e-7)


def test_the_class_balanced_loss_weighs_every_class_the_same():
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0] * 6 + [1, 2])  # 6, 1 and 1 images
    logits = torch.randn(8, 3, generator=g)
    weights = class_weights(y, 3)
    assert weights.tolist() == pytest.approx([8 / 18, 8 / 3, 8 / 3])
    per_image = F.cross_entropy(logits, y, reduction="none")
    per_class = torch.stack([per_image[y == c].mean() for c in range(3)])
    assert TaskLoss(balanced=True)(logits, y, weights).item() == pytest.approx(per_class.mean().item(), abs=1e-6)
    assert class_weights(torch.tensor([0, 0, 2]), 3).tolist() == pytest.approx([0.5, 0.0, 1.0])  # no images: 0


def test_robust_losses_are_the_published_formulas():
    g = torch.Generator().manual_seed(2)
    logits, y = torch.randn(5, 3, generator=g), torch.tensor([0, 1, 2, 0, 1])
    p = torch.softmax(logits, -1)
    ce = F.cross_entropy(logits, y, reduction="none")
    sce = ce + 4.0 * (1 - p[torch.arange(5), y])  # reverse cross-entropy with log 0 := -4
    assert TaskLoss("sce")(logits, y).item() == pytest.approx(sce.mean().item(), abs=1e-6)
    soft = torch.full((5, 3), 0.2 / 3) + 0.8 * F.one_hot(y, 3)
    assert TaskLoss("smooth", smoothing=0.2)(logits, y).item() == pytest.approx(
        -(soft * torch.log_softmax(logits, -1)).sum(-1).mean().item(), abs=1e-6)
    with pytest.raises(SettingsError, match="--finetune.loss must be one of"):
        TaskLoss("focal")
    with pytest.raises(SettingsError, match=r"--finetune.smoothing must be in \[0, 1\)"):
        FinetuneConfig(loss="smooth", smoothing=1.0)


def test_balanced_finetuning_of_a_balanced_task_is_plain_finetuning():
    torch.manual_seed(0)
    net = SuperNet(TINY, ways=3)
    task = toy_task(per_class=4)
    arch = Architecture(("conv3x3", "max_pool3x3"), (8, 4))
    adapter = TaskAdapter(net, inner_lr=0.4)
    plain = finetune(adapter, arch, task.images, task.labels, 5, 0.01, batch_size=6)
    balanced = finetune(adapter, arch, task.images, task.labels, 5, 0.01, batch_size=6, loss=TaskLoss(balanced=True))
    assert all(torch.equal(a, b) for a, b in zip(plain, balanced))
    seen = []
    finetune(adapter, arch, task.images, task.labels, 3, 0.01, batch_size=6,
             observe=lambda index, logits: seen.append((index.tolist(), logits.shape)))
    assert [len(i) for i, _ in seen] == [6, 6, 6] and all(shape == (6, 3) for _, shape in seen)
    assert sorted(seen[0][0] + seen[1][0]) == list(range(12))  # one permutation, then the next


# -- the suspect scores ------------------------------------------------------------------------
def test_prototype_scores_rank_an_image_filed_under_the_wrong_class_first():
    centres = torch.eye(3, 8) * 4
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    truth = labels.clone()
    truth[2] = 1  # image 2 is a 1 filed under 0
    features = centres[truth] + 0.3 * torch.randn(10, 8, generator=g)
    scores = prototype_scores(features, labels, 3)
    assert int(scores.argmax()) == 2 and scores[2] > 0 > scores[[0, 1, 3, 4, 5, 6, 7, 8, 9]].max()
    alone = prototype_scores(features[[0, 1, 3]], torch.tensor([0, 0, 1]), 3)
    assert alone[2] == float("-inf")  # alone in its class: no own mean without it
    found = flagged(scores, labels, 0.0)
    assert found.tolist() == [2]
    assert precision_recall(found, truth != labels) == (1, 1, 1)
    assert precision_recall(torch.tensor([2, 5]), truth != labels) == (1, 2, 1)


def test_flagging_never_empties_a_class_and_lists_the_most_suspect_first():
    labels = torch.tensor([0, 0, 1, 1, 1])
    scores = torch.tensor([3.0, 2.0, 0.5, 5.0, -1.0])
    assert flagged(scores, labels, 0.0).tolist() == [3, 0, 2]  # class 0 keeps image 1, class 1 keeps 4
    assert flagged(scores, labels, 1.0).tolist() == [3, 0]
    assert flagged(torch.tensor([9.0]), torch.tensor([0]), 0.0).tolist() == []


def test_margins_and_their_mean_over_fine_tuning():
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])
    labels = torch.tensor([0, 2])
    assert margins(logits, labels).tolist() == [1.0, -4.0]
    trace = MarginTrace(torch.tensor([0, 2, 1]))
    trace(torch.tensor([0, 1]), logits)
    trace(torch.tensor([1]), torch.tensor([[0.0, 0.0, 2.0]]))
    assert trace.scores().tolist() == [-1.0, 1.0, 0.0]  # image 1: mean of -4 and +2, negated; 2: unseen
    assert auroc(torch.tensor([3.0, 1.0, 2.0, 0.0]), torch.tensor([True, False, True, False])) == 1.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == 0.5


def test_adapt_lists_the_swapped_images_and_drops_them_on_request():
    torch.manual_seed(0)
    supernet = SuperNet(TINY, ways=3)
    train, val = split_image_folder(toy_task(per_class=8), 0.25, seed=0)
    labels = train.labels.clone()
    labels[0], labels[7] = 1, 2  # a 0 filed under 1, a 1 filed under 2
    train = LabelledImages(train.images, labels, train.class_names)
    arch = Architecture(("conv3x3", "max_pool3x3"), (8, 8))
    tuning, config = FinetuneConfig(steps=10), SuspectConfig(threshold=0.3, drop=False)
    kept = adapt(supernet, MetaConfig(), train, val, PLAIN, tuning=tuning, arch=arch, suspects=config)
    assert set(kept.suspect_scores) == {"prototype", "aum", "margin", "loss"}
    assert all(len(v) == len(labels) for v in kept.suspect_scores.values())
    scores = kept.suspect_scores["prototype"]
    assert sorted(kept.suspects) == [0, 7] and not kept.dropped
    assert scores[kept.suspects[0]] >= scores[kept.suspects[1]]  # most suspect first
    dropped = adapt(supernet, MetaConfig(), train, val, PLAIN, tuning=tuning, arch=arch,
                    suspects=replace(config, drop=True))
    assert dropped.suspects == kept.suspects and dropped.dropped
    assert dropped.suspect_scores["aum"][[0, 7]].isnan().all()  # not seen by the fine-tuning
    assert not dropped.suspect_scores["aum"][1:7].isnan().any()
    assert torch.equal(dropped.suspect_scores["prototype"], kept.suspect_scores["prototype"])
    assert any(not torch.equal(a, b) for a, b in zip(dropped.model.net.state_dict().values(),
                                                     kept.model.net.state_dict().values()))
    predictions = dropped.model.logits(val.images, batch_size=1).argmax(-1)
    assert torch.equal(predictions, dropped.predictions)
    assert float((predictions == val.labels).float().mean()) == dropped.val_acc
    # auto: 2 suspects of 18 images (11%) drop at a share of 0.1, not at 0.2; each is one of the two above
    assert len(labels) == 18
    for share, same_as in ((0.1, dropped), (0.2, kept)):
        auto = adapt(supernet, MetaConfig(), train, val, PLAIN, tuning=tuning, arch=arch,
                     suspects=replace(config, auto_share=share, drop="auto"))
        assert auto.suspects == kept.suspects and auto.dropped is same_as.dropped
        assert all(torch.equal(a, b) for a, b in zip(auto.model.net.state_dict().values(),
                                                     same_as.model.net.state_dict().values()))


def test_the_layered_prototype_score_averages_each_layers_score():
    torch.manual_seed(0)
    supernet = SuperNet(TINY, ways=3)
    arch = Architecture(("conv3x3", "max_pool3x3"), (8, 8))
    x = torch.randn(12, 1, 28, 28)
    layers = supernet.layer_features(x, arch)
    assert [tuple(f.shape) for f in layers] == [(12, 8), (12, 8)]
    assert torch.equal(layers[-1], supernet.features(x, arch))
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    one, two = (prototype_scores(f, labels, 3) for f in layers)
    assert torch.equal(layered_prototype_scores(layers[-1:], labels, 3), two)
    assert torch.allclose(layered_prototype_scores(layers, labels, 3), (one + two) / 2)
    alone = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2])  # class 2 has one image: never suspect
    assert layered_prototype_scores(layers, alone, 3)[11] == float("-inf")
    # adapt() lists by the score over SuspectConfig.layers layers
    train, val = split_image_folder(toy_task(per_class=8), 0.25, seed=0)
    for count in (1, 2):
        result = adapt(supernet, MetaConfig(), train, val, PLAIN, tuning=FinetuneConfig(steps=2), arch=arch,
                       suspects=SuspectConfig(layers=count, drop=False))
        features = supernet.layer_features(train.images, arch)[-count:]
        # to float rounding: adapt() runs the network in its own memory layout
        assert torch.allclose(result.suspect_scores["prototype"],
                              layered_prototype_scores(features, train.labels, train.num_classes), atol=1e-5)
    for bad in (0, True, 1.5):
        with pytest.raises(SettingsError, match=re.escape(f"--suspects.layers must be a whole number of layers, 1 or "
                                                          f"more, got {bad!r}")):
            SuspectConfig(layers=bad)


def test_auto_drops_the_suspects_from_a_share_of_the_images_on():
    rule = SuspectConfig()
    assert rule.drop == "auto" and rule.auto_share == 0.1  # the defaults chosen on validation classes
    assert [rule.drops(n, 25) for n in (0, 1, 2, 3, 10)] == [False, False, False, True, True]
    assert rule.drops(1, 10) and not rule.drops(0, 10)
    assert SuspectConfig(drop=True).drops(1, 100) and not SuspectConfig(drop=True).drops(0, 100)
    assert not SuspectConfig(drop=False).drops(25, 25)
    assert SuspectConfig(auto_share=0.0).drops(1, 100) and not SuspectConfig(auto_share=0.0).drops(0, 100)
    for bad, message in (({"drop": "sometimes"}, "--drop_suspects must be true, false or auto, got 'sometimes'"),
                         ({"auto_share": 1.5}, "--suspects.auto_share must be a share in [0, 1], got 1.5")):
        with pytest.raises(SettingsError, match=re.escape(message)):
            SuspectConfig(**bad)


# -- the data summary and the held-out report ----------------------------------------------------
def test_data_summary_counts_imbalance_duplicates_and_undecodable_files(tmp_path):
    rng = random.Random(0)
    for name, n in (("bolt", 6), ("crack", 2), ("dent", 3)):
        (tmp_path / name).mkdir()
        for i in range(n):
            draw({"bolt": "disc", "crack": "hbars", "dent": "frame"}[name], rng).save(tmp_path / name / f"{i}.png")
    shutil.copy(tmp_path / "bolt" / "0.png", tmp_path / "dent" / "copy.png")  # one image under two classes
    shutil.copy(tmp_path / "bolt" / "1.png", tmp_path / "bolt" / "1b.png")  # a copy in its own class: fine
    (tmp_path / "crack" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    summary = survey_folder(tmp_path)
    assert summary.class_names == ["bolt", "crack", "dent"] and summary.counts == [7, 2, 4]
    assert summary.duplicates == [[str(tmp_path / "bolt" / "0.png"), str(tmp_path / "dent" / "copy.png")]]
    data, paths = decode_folder(summary, Preprocessing(14, 1, False))
    assert data.images.shape == (12, 1, 14, 14) and data.labels.bincount().tolist() == [7, 1, 4]
    assert list(summary.undecodable) == [str(tmp_path / "crack" / "1.png")]
    assert "cannot decode image" in summary.undecodable[str(tmp_path / "crack" / "1.png")]
    assert str(tmp_path / "crack" / "1.png") not in paths and len(paths) == 12
    assert summary.counts == [7, 1, 4] and summary.imbalance_ratio == 7.0 and summary.too_few(2) == ["crack"]
    text = summary.lines(2)
    assert text[0] == ("data: 3 classes, 12 images (per class: bolt 7, crack 1, dent 4); imbalance ratio 7.0 "
                       "(largest class / smallest)")
    assert text[1:] == ["data: byte-identical images in different classes: bolt/0.png = dent/copy.png",
                        "data: classes with fewer than 2 images: crack",
                        f"data: skipped crack/1.png, which does not decode ({summary.undecodable[str(tmp_path / 'crack' / '1.png')]})"]
    with pytest.raises(DataError, match=r"class folder .*crack has 1 image that decode \(crack/1\.png do not\); "
                                        r"every class needs at least 2"):
        summary.check(2, "why")
    record = summary.to_dict(2)
    assert record["counts"] == {"bolt": 7, "crack": 1, "dent": 4} and record["too_few"] == ["crack"]
    json.dumps(record)  # what --out writes


def test_split_with_indices_names_the_images_split_image_folder_puts_in_each_part():
    data = toy_task(classes=3, per_class=5)
    train, val, train_at, val_at = split_with_indices(data, 0.4, seed=3)
    ref_train, ref_val = split_image_folder(data, 0.4, seed=3)
    assert torch.equal(train.images, ref_train.images) and torch.equal(val.images, ref_val.images)
    assert torch.equal(data.images[train_at], train.images) and torch.equal(data.images[val_at], val.images)
    assert sorted(train_at + val_at) == list(range(15))


def test_confusion_matrix_recall_and_its_printout():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 0, 1])
    matrix = confusion_matrix(predicted, labels, 3)
    assert matrix.tolist() == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    assert recall_per_class(matrix) == pytest.approx([2 / 3, 0.5, 0.0])
    assert balanced_accuracy(matrix) == pytest.approx((2 / 3 + 0.5) / 3)
    text = lines(matrix, ["ok", "dent", "c"])
    assert text[0] == "held-out recall per class: ok 67% (2/3), dent 50% (1/2), c 0% (0/1)"
    assert text[2:] == ["    ok  2  1  0", "  dent  1  1  0", "     c  0  1  0"]


# -- adapt.py on a folder from site --------------------------------------------------------------
def tiny_checkpoint(path, tmp_path, ways=4):
    """A MetaNASModule checkpoint as Lightning writes it (meta-weights: a seeded initialisation),
    whose architecture is a small conv net: enough for adapt.py to run end to end in seconds."""
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(Architecture(("conv3x3", "conv3x3"), (16, 16)).to_dict()))
    torch.manual_seed(0)
    module = MetaNASModule(ways=ways, image_size=28, search_space=SearchSpace(widths=(8, 16), depths=(2, 3)),
                           eval_arch=str(arch), seed=0)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def site_folder(root):
    """Shapes with 8 discs, 8 frames, 3 horizontal and 8 vertical bars; two bars filed as
    discs, a frame copied into the discs, one file that does not decode."""
    write_shapes(root, per_class=8)
    for name in ("03.png", "04.png", "05.png", "06.png", "07.png"):
        (root / "hbars" / name).unlink()
    (root / "vbars" / "06.png").rename(root / "disc" / "vbars06.png")
    (root / "vbars" / "07.png").rename(root / "disc" / "vbars07.png")
    shutil.copy(root / "frame" / "00.png", root / "disc" / "frame_copy.png")
    (root / "frame" / "07.png").write_bytes(b"not an image")
    return root


@pytest.mark.slow
def test_adapt_py_on_a_mislabelled_imbalanced_folder(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt", tmp_path)
    folder = site_folder(tmp_path / "site")
    out = tmp_path / "site.json"
    stdout, _ = finish(start("--ckpt_path", str(ckpt), "--data.root", str(folder), "--finetune.steps", "30",
                             "--out", str(out), "--suspects.threshold", "0.0"))
    printed = stdout.splitlines()
    assert printed[0] == ("data: 4 classes, 27 images (per class: disc 11, frame 7, hbars 3, vbars 6); imbalance ratio "
                          "3.7 (largest class / smallest)")
    assert printed[1] == "data: byte-identical images in different classes: disc/frame_copy.png = frame/00.png"
    assert printed[2].startswith("data: skipped frame/07.png, which does not decode (cannot decode image")
    record = json.loads(out.read_text())
    suspects = [row["file"] for row in record["suspects"]]
    line = next(line for line in printed if line.startswith("suspects: "))
    dropped = len(suspects) >= 0.1 * record["n_train"]  # --drop_suspects auto, the default
    assert record["suspects_dropped"] is dropped
    assert line.startswith(f"suspects: {len(suspects)} of {record['n_train']} training images look filed under the "
                           "wrong class (--suspects.score prototype over 2 layers above 0); " + (
                               "adapted again without them (--drop_suspects auto: 10% of the images or more)" if dropped
                               else "kept (--drop_suspects auto: 10% of the images or more); --drop_suspects true "
                               "adapts again without them"))
    mislabelled = {"disc/vbars06.png", "disc/vbars07.png"} - set(record["held_out_files"])
    assert mislabelled and mislabelled <= set(suspects), (mislabelled, suspects)
    assert record["data"]["counts"] == {"disc": 11, "frame": 7, "hbars": 3, "vbars": 6}
    assert record["data"]["undecodable"] == {str(folder / "frame" / "07.png"): record["data"]["undecodable"][
        str(folder / "frame" / "07.png")]}
    assert len(record["confusion"]) == 4 and sum(map(sum, record["confusion"])) == record["n_val"]
    assert list(record["held_out_recall"]) == ["disc", "frame", "hbars", "vbars"]
    assert record["finetune_settings"]["balanced"] is FinetuneConfig().balanced
    assert (tmp_path / "site.model.confusion.png").is_file() and record["confusion_plot"].endswith("confusion.png")
    assert any(line.startswith("held-out recall per class: disc ") for line in printed)


def test_adapt_py_names_the_class_left_with_too_few_images(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt", tmp_path)
    folder = write_shapes(tmp_path / "task", per_class=2)
    (folder / "hbars" / "01.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert run_main(lambda: adapt_cli.main(["--ckpt_path", str(ckpt), "--data.root", str(folder)])) == 1
    captured = capsys.readouterr()
    assert captured.err == (f"error: class folder {folder / 'hbars'} has 1 image that decode (hbars/01.png do not); "
                            "every class needs at least 2 (one for training, one for validation)\n")
    assert "data: skipped hbars/01.png, which does not decode" in captured.out
    # a bad choice is refused by the parser, as every choice flag is (e.g. --finetune.optimizer)
    with pytest.raises(SystemExit):
        adapt_cli.main(["--ckpt_path", str(ckpt), "--data.root", str(folder), "--suspects.score", "vote"])
    err = capsys.readouterr().err
    assert "suspects.score" in err and "'prototype', 'aum', 'margin', 'loss'" in err and "vote" in err
    with pytest.raises(SettingsError, match=r"--suspects.score must be one of \['prototype', 'aum', 'margin', 'loss'\], got 'vote'"):
        SuspectConfig(score="vote")


def test_robust_adapt_table_pairs_each_mode_with_naive_on_the_same_tasks(tmp_path):
    from bench import robust_adapt_table

    def entry(mode, acc):
        return {"arch": "conv3x3@8", "setting": "noise20", "mode": mode, "tasks": 3, "split": "test",
                "acc": sum(acc) / 3, "acc_ci95": 0.1, "balanced_acc": sum(acc) / 3, "acc_transductive": 0.5,
                "flag_precision": 0.75, "flag_recall": 0.5, "per_task": {"acc": acc}, "checkpoint": "c.ckpt",
                "command": f"python bench/robust_adapt.py --modes {mode}", "machine": "cpu"}

    entries = [entry("naive", [0.5, 0.6, 0.7]), entry("balanced", [0.6, 0.7, 0.8]), entry("sce", [0.5, 0.6, 0.7])]
    data = tmp_path / "robust.json"
    data.write_text(json.dumps(entries))
    doc = tmp_path / "RESULTS.md"
    start, end = robust_adapt_table.markers("test")
    doc.write_text(f"before\n{start}\nold\n{end}\nafter\n")
    robust_adapt_table.main(["--file", str(data), "--write", str(doc)])
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| noise20")}
    assert rows["balanced"].split(" | ")[3] == "+10.00 ± 0.00"  # every task 0.1 better: no spread
    assert rows["sce"].split(" | ")[3] == "+0.00 ± 0.00" and rows["naive"].split(" | ")[3] == "-"
    assert "0.75 / 0.50" in rows["naive"]
    with pytest.raises(SystemExit, match="no .* block"):
        robust_adapt_table.main(["--file", str(data), "--write", str(data)])


def test_confusion_plot_fits_long_class_names_without_a_layout_warning(tmp_path, recwarn):
    from lightning_metanas.heldout import plot_confusion, short_label

    names = [f"000{i}-images_evaluation--Alphabet_of_the_Magi--character1{i}" for i in range(5)]
    assert short_label(names[3]) == "0003-images…-character13" and len(short_label(names[3])) == 24
    assert short_label("disc") == "disc"
    assert len({short_label(n) for n in names}) == 5  # still tells the classes apart
    path = plot_confusion(torch.eye(5, dtype=torch.long) * 3, names, tmp_path / "c.png")
    assert path.stat().st_size > 0
    assert not [w for w in recwarn if "layout" in str(w.message).lower()]


def test_the_two_layer_rule_weighs_clean_costs_and_noisy_gains():
    from bench.robust_adapt_layers import decide

    def task(setting, listed, keep, drop):
        return {"arch": "a", "setting": setting, "listed": listed, "images": [25] * len(listed),
                "acc_default": keep, "acc_drop": drop}

    def cells(clean, noisy):
        return {("a", "clean-5shot"): {"per_task": {"acc": clean}}, ("a", "noise20"): {"per_task": {"acc": noisy}}}

    # one layer: clean task 2 listed 3 of 25 (>= 10%), so its figure is the dropped one (0.8)
    tasks = [task("clean-5shot", [0, 3], [0.9, 0.9], [0.9, 0.8]), task("noise20", [5, 5], [0.6, 0.6], [0.7, 0.8])]
    rows, passes = decide(tasks, cells([0.9, 0.9], [0.8, 0.8]))
    assert [(r["setting"], round(r["one"], 4), round(r["two"], 4)) for r in rows] == [
        ("clean-5shot", 0.85, 0.9), ("noise20", 0.75, 0.8)]
    assert passes
    assert not decide(tasks, cells([0.84, 0.84], [0.8, 0.8]))[1]  # clean 1 point below: refused
    assert not decide(tasks, cells([0.9, 0.9], [0.7, 0.7]))[1]  # noisy worse on the mean: refused
    assert not decide(tasks, {})[1]  # nothing measured: no switch
