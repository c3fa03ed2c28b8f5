"""A last layer that normalises each image alone (``model.meta.last_norm=layer``): the setting,
what a pass records, and the path from train.py's config to a checkpoint, eval.py and the
plain network."""
import pytest
import torch

from lightning_metanas.errors import SettingsError
from lightning_metanas.functional import UsedParameters, subnet_function
from lightning_metanas.meta_config import MetaConfig
from lightning_metanas.ops import NormStatistics
from lightning_metanas.search_space import Architecture, SearchSpace
from lightning_metanas.supernet import SuperNet

SPACE = SearchSpace(widths=(8, 16), depths=(2, 3))
ARCHS = [Architecture(("conv3x3", "max_pool3x3"), (16, 8)), Architecture(("sep_conv3x3", "skip", "conv5x5"), (8, 8, 16))]


def test_the_setting_is_checked_and_reaches_the_supernet():
    assert MetaConfig().last_norm == "task" and MetaConfig(last_norm="layer").last_norm == "layer"
    with pytest.raises(SettingsError, match=r"model.meta.last_norm must be one of \['task', 'layer'\]"):
        MetaConfig(last_norm="instance")
    with pytest.raises(ValueError, match="last_norm must be one of"):
        SuperNet(SPACE, ways=5, last_norm="group")


def test_only_the_last_layer_ignores_the_task_statistics():
    """Every layer but the last records and applies the support images' statistics; the last
    one's output for an image does not depend on them, so support and transductive passes
    differ only through the earlier layers: with one layer taking statistics, queried alone."""
    torch.manual_seed(0)
    task, own = SuperNet(SPACE, ways=5), SuperNet(SPACE, ways=5, last_norm="layer")
    own.load_state_dict(task.state_dict())  # the same parameters: only the last layer's maths differs
    x = torch.randn(6, 1, 14, 14)
    for arch in ARCHS:
        stats = NormStatistics()
        own(x, arch, stats.record())
        assert len(stats.means) == arch.depth - 1
        with torch.no_grad():
            assert not torch.allclose(own(x, arch), task(x, arch), atol=1e-3)
        names, params = UsedParameters(own)(arch)
        forward = subnet_function(own, arch, names)
        support, queries = torch.randn(5, 1, 14, 14), torch.randn(7, 1, 14, 14)
        batch = forward(params, queries, support)
        alone = torch.cat([forward(params, queries[i:i + 1], support) for i in range(7)])
        assert torch.allclose(alone, batch, atol=1e-6)


def test_train_then_eval_a_last_layer_norm_checkpoint(tmp_path):
    """The setting reaches the SuperNet through train.py's config, the checkpoint rebuilds it in
    eval.py, and the plain network of its meta-weights computes what the SuperNet computes."""
    from tests.test_train import SYNTHETIC, logs, run
    run("train.py", *SYNTHETIC, *logs(tmp_path, "ln"), "--trainer.max_epochs=1",
        "--model.meta.norm=support", "--model.meta.last_norm=layer")
    ckpt = tmp_path / "ln" / "version_0" / "checkpoints" / "last.ckpt"
    out = run("eval.py", "--ckpt_path", str(ckpt), "--data.test_tasks", "6").stdout
    assert "over 6 tasks, 3-way 1-shot" in out
    from lightning_metanas.export import from_checkpoint
    from lightning_metanas.module import MetaNASModule
    module = MetaNASModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert module.supernet.last_norm == "layer"
    net, x = from_checkpoint(str(ckpt)), torch.randn(6, 1, 14, 14)
    assert type(net.layers[-1].norm).__name__ == "GroupNorm"
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.supernet(x, module.evaluated_architecture()), rtol=1e-4, atol=1e-5)
