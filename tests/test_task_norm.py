"""TaskNorm-I (``model.meta.norm_layer=task_norm_i``): the blend's two ends are BatchNorm and
instance norm, a query image's logits do not depend on its batch, finite differences still
match second order, and the setting runs end to end. (Support statistics vs the batch's, and
per task vs vectorised: ``test_meta_gradients.py``, parametrised over the norm layer; the
standalone network and the saved model: ``test_standalone.py``, ``test_adapted_model.py``.)

Tolerances: float64 throughout; one image vs a batch ``rtol=1e-7`` (the same arithmetic, only the
batch dimension differs); finite differences vs second order as in ``test_meta_gradients.py``
(``1 - cos < 1e-6``); the exported checkpoint network vs the SuperNet ``rtol=1e-4`` (float32).
"""
import pytest
import torch
import torch.nn.functional as F

from lightning_metanas.errors import SettingsError
from lightning_metanas.functional import UsedParameters, subnet_function
from lightning_metanas.maml import TaskAdapter
from lightning_metanas.meta_config import MetaConfig
from lightning_metanas.ops import BN_EPS, blend_normalize, blend_weight
from lightning_metanas.standalone import StandaloneNet
from lightning_metanas.supernet import SuperNet
from tests.helpers import ARCHS, MODES, SPACE, flat, one_task, small_supernet


def task_norm_supernet():
    return small_supernet(torch.float64, task_norm=True)


def test_the_blend_ends_are_batch_norm_and_instance_norm():
    torch.manual_seed(0)
    y = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    weight, bias = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
    one = torch.tensor(1.0, dtype=torch.float64)
    torch.testing.assert_close(blend_normalize(y, mean, var, one, weight, bias),
                               F.batch_norm(y, None, None, weight, bias, training=True, eps=BN_EPS))
    torch.testing.assert_close(blend_normalize(y, mean, var, one * 0, weight, bias),
                               F.instance_norm(y, weight=weight, bias=bias, eps=BN_EPS))
    # alpha = sigmoid(a n + b): (0, 0) is one half, and a > 0 leans to the task's with more images
    assert blend_weight(torch.zeros(2), 5).item() == 0.5
    assert 0.5 < blend_weight(torch.tensor([0.1, 0.0]), 5).item() < blend_weight(torch.tensor([0.1, 0.0]), 20).item()


def test_a_one_pixel_map_normalises_without_nan():
    y = torch.randn(3, 2, 1, 1, dtype=torch.float64)
    var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
    out = blend_normalize(y, mean, var, torch.tensor(0.5, dtype=torch.float64), torch.ones(2), torch.zeros(2))
    assert torch.isfinite(out).all() and out.std() > 0


@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_a_query_image_gets_the_same_logits_alone_and_in_any_batch(arch):
    net = task_norm_supernet()
    names, params = UsedParameters(net)(arch)
    forward = subnet_function(net, arch, names)
    (support, _), (query, _) = one_task(seed=1, queries=3, dtype=torch.float64)
    with torch.no_grad():
        batch = forward(params, query, support)
        alone = torch.cat([forward(params, query[i:i + 1], support) for i in range(len(query))])
        reversed_batch = forward(params, query.flip(0), support).flip(0)
        transductive = forward(params, query)  # blended with the query batch's own statistics
    torch.testing.assert_close(alone, batch, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(reversed_batch, batch, rtol=1e-7, atol=1e-9)
    assert not torch.allclose(transductive, batch)  # the task statistics really enter


def test_finite_differences_match_second_order_and_the_blend_learns():
    net = task_norm_supernet()
    adapter = TaskAdapter(net, inner_lr=0.4, fd_epsilon=1e-6, norm="support")
    support, query = one_task(seed=2, dtype=torch.float64)
    results = {mode: adapter.meta_gradient(ARCHS[0], support, query, steps=2, mode=mode) for mode in MODES}
    so, fd = flat(results["second_order"].grads), flat(results["finite_difference"].grads)
    assert 1 - F.cosine_similarity(fd, so, dim=0).item() < 1e-6
    names = [n for n, _ in net.parameters_of(ARCHS[0])]
    blends = [g for n, g in zip(names, results["second_order"].grads) if n.endswith("norm_blend")]
    assert len(blends) == len(ARCHS[0].ops)  # one (a, b) per layer, each with a gradient
    assert all(g is not None and g.abs().sum() > 0 for g in blends)


def test_the_blend_counts_as_two_parameters_per_layer_and_reaches_the_standalone_network():
    plain, blended = SuperNet(SPACE, ways=5), SuperNet(SPACE, ways=5, task_norm=True)
    for arch in ARCHS:
        assert blended.num_parameters(arch) == plain.num_parameters(arch) + 2 * len(arch.ops)
    with torch.no_grad():
        blended.slots[0]["conv3x3"].norm_blend.copy_(torch.tensor([0.5, -1.0]))
    standalone = StandaloneNet.from_supernet(blended, ARCHS[0], 14)
    assert standalone.task_norm and torch.equal(standalone.layers[0].norm.blend, torch.tensor([0.5, -1.0]))
    assert MetaConfig(norm_layer="task_norm_i").norm_layer == "task_norm_i"
    with pytest.raises(SettingsError, match="model.meta.norm_layer must be one of"):
        MetaConfig(norm_layer="group")


def test_train_then_eval_a_task_norm_checkpoint(tmp_path):
    """The setting reaches the SuperNet through train.py's config, and the checkpoint rebuilds
    it (its blend parameters load) in eval.py."""
    from tests.test_train import SYNTHETIC, logs, run
    run("train.py", *SYNTHETIC, *logs(tmp_path, "tn"), "--trainer.max_epochs=1",
        "--model.meta.norm=support", "--model.meta.norm_layer=task_norm_i")
    ckpt = tmp_path / "tn" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    blends = [k for k in state if k.endswith("norm_blend")]
    assert blends and all(state[k].shape == (2,) for k in blends)
    assert any(not torch.equal(state[k], torch.zeros(2)) for k in blends)  # meta-training moved them
    out = run("eval.py", "--ckpt_path", str(ckpt), "--data.test_tasks", "6").stdout
    assert "over 6 tasks, 3-way 1-shot" in out
    # the meta-weights as a plain network (export.from_checkpoint: the batch is the task) compute
    # what the SuperNet computes with its own batch's statistics
    from lightning_metanas.export import from_checkpoint
    from lightning_metanas.module import MetaNASModule
    module = MetaNASModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    net, x = from_checkpoint(str(ckpt)), torch.randn(6, 1, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.supernet(x, module.evaluated_architecture()), rtol=1e-4, atol=1e-5)
