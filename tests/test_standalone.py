"""Inductive inference: BatchNorm statistics recorded on support images and applied to any
image alone, and the standalone network that carries them (no SuperNet, no functional call)."""
import random

import pytest
import torch
import torch.nn.functional as F

from lightning_metanas.functional import UsedParameters, record_statistics, subnet_function
from lightning_metanas.latency import LatencyTable
from lightning_metanas.maml import TaskAdapter
from lightning_metanas.ops import OPERATIONS, NormStatistics
from lightning_metanas.search_space import Architecture, SearchSpace
from lightning_metanas.standalone import StandaloneNet
from lightning_metanas.supernet import SuperNet

SPACE = SearchSpace(widths=(8, 16), depths=(2, 3, 4))


def _net(seed=0, channels=1, task_norm=False, last_norm="task"):
    torch.manual_seed(seed)
    net = SuperNet(SPACE, ways=4, in_channels=channels, task_norm=task_norm, last_norm=last_norm)
    with torch.no_grad():  # BatchNorm affine parameters (and TaskNorm-I's blend) away from 1 and 0, so they matter
        for name, p in net.named_parameters():
            if name.endswith(("bn_weight", "bn_bias", "norm_blend")):
                p.add_(0.3 * torch.randn_like(p))
    return net


def _archs():
    rng = random.Random(0)
    every_op = [Architecture((op, "conv3x3"), (8, 16)) for op in OPERATIONS]
    return every_op + [SPACE.sample(rng) for _ in range(12)]


def test_recording_pass_is_batch_norm_and_applying_to_the_same_images_reproduces_it():
    net = _net()
    x = torch.randn(6, 1, 14, 14)
    for arch in _archs():
        stats = NormStatistics()
        recorded = net(x, arch, stats.record())
        assert torch.equal(recorded, net(x, arch))  # recording changes nothing
        assert len(stats.means) == arch.depth and stats.means[0].shape == (arch.widths[0],)
        assert torch.allclose(net(x, arch, stats.apply()), recorded, atol=1e-5)


def test_support_normalised_prediction_of_an_image_is_the_same_alone_and_in_any_batch():
    net = _net()
    names, params = UsedParameters(net)(Architecture(("conv3x3", "max_pool3x3", "sep_conv3x3"), (16, 8, 16)))
    forward = subnet_function(net, Architecture(("conv3x3", "max_pool3x3", "sep_conv3x3"), (16, 8, 16)), names)
    support, queries = torch.randn(4, 1, 14, 14), torch.randn(9, 1, 14, 14)
    batch = forward(params, queries, support)
    alone = torch.cat([forward(params, queries[i:i + 1], support) for i in range(9)])
    shuffled = forward(params, queries.flip(0), support).flip(0)
    assert torch.allclose(alone, batch, atol=1e-6) and torch.allclose(shuffled, batch, atol=1e-6)
    transductive = forward(params, queries)
    assert not torch.allclose(transductive, batch, atol=1e-3)  # the batch's own statistics differ


@pytest.mark.parametrize("channels, task_norm, last_norm", [
    (1, False, "task"), (3, False, "task"), (1, True, "task"), (3, True, "task"), (1, False, "layer"), (3, True, "layer")])
def test_standalone_network_equals_the_subnet_with_support_statistics(channels, task_norm, last_norm):
    net = _net(channels=channels, task_norm=task_norm, last_norm=last_norm)
    support, queries = torch.randn(5, channels, 14, 14), torch.randn(7, channels, 14, 14)
    for arch in _archs():
        names, params = UsedParameters(net)(arch)
        adapted = [p.detach() + 0.01 * torch.randn_like(p) for p in params]  # weights other than the SuperNet's
        stats = record_statistics(net, arch, names, adapted, support)
        standalone = StandaloneNet.from_supernet(net, arch, 14, adapted, stats)
        with torch.no_grad():
            expected = subnet_function(net, arch, names)(adapted, queries, support)
            assert torch.allclose(standalone(queries), expected, atol=1e-5), arch
            assert torch.allclose(standalone(queries[:1]), expected[:1], atol=1e-5)
        # TaskNorm-I's blend is fixed after adaptation: a buffer of the standalone layer, not a parameter
        assert standalone.num_parameters() == net.num_parameters(arch) - (2 * arch.depth if task_norm else 0)
        assert not any(isinstance(m, SuperNet) for m in standalone.modules())
        assert len(stats.means) == arch.depth - (last_norm == "layer")  # a layer-normalised last layer records none


def test_a_layer_normalised_last_layer_depends_on_the_image_alone():
    """``last_norm=layer``: the last layer's output for an image is the same whatever the batch
    and whatever statistics the other layers use, and it equals GroupNorm with one group."""
    net = _net(last_norm="layer")
    x = torch.randn(6, 1, 14, 14)
    for arch in _archs():
        maps = list(net._layer_maps(x, arch, None))
        before = maps[-2] if arch.depth > 1 else x
        op = net.slots[arch.depth - 1][arch.ops[-1]]
        y = op.transform(before, arch.widths[-1])
        want = F.group_norm(y, 1, op.bn_weight[: arch.widths[-1]], op.bn_bias[: arch.widths[-1]], 1e-5)
        got = op(before, arch.widths[-1], None, "layer")
        assert torch.allclose(got, want, atol=1e-6)
        assert torch.allclose(op(before[:1], arch.widths[-1], None, "layer"), want[:1], atol=1e-6)
        # the SuperNet uses it at the last layer only: batch statistics there would differ
        assert not torch.allclose(op(before, arch.widths[-1]), want, atol=1e-3)

def test_evaluation_under_both_norms_shares_one_adaptation_and_matches_each_alone():
    net = _net()
    adapter = TaskAdapter(net, inner_lr=0.3, workers=1)
    g = torch.Generator().manual_seed(1)
    tasks = (torch.randn(3, 4, 1, 14, 14, generator=g), torch.arange(4).repeat(3, 1),
             torch.randn(3, 8, 1, 14, 14, generator=g), torch.arange(4).repeat_interleave(2).repeat(3, 1))
    arch = Architecture(("conv3x3", "conv5x5"), (16, 8))
    both = adapter.evaluate_tasks_norms(arch, tasks, 2, ("transductive", "support"))
    assert torch.equal(both["transductive"].accuracy, adapter.evaluate_tasks(arch, tasks, 2).accuracy)
    assert torch.equal(both["support"].accuracy, adapter.evaluate_tasks(arch, tasks, 2, "support").accuracy)
    assert both["support"].accuracy.shape == (3,)


def test_latency_table_measures_each_architecture_once():
    table = LatencyTable(in_channels=1, image_size=14, ways=4, repeats=3)
    arch = Architecture(("conv3x3", "skip"), (8, 8))
    first = table(arch)
    assert 0 < first < 1000 and table(arch) == first and len(table.measured) == 1
