"""The vectorised way to run the inner loop (tasks that share an architecture as one vmap'd
stack) against the per-task way, on CPU; the finite differences' float32 scope and their
host synchronisations; the NaN guard's one read-back; tasks per architecture.

Tolerances (float64): first- and second-order meta-gradients, losses: ``rtol=1e-9``
(measured ~1e-13: grouped convolutions sum in another order). Finite differences
(``fd_epsilon=1e-6``): the two ways differ by the rounding of the support gradients divided
by ``2 eps``: relative error of the summed gradient ``< 1e-6`` (measured ~1e-8; each is
~2e-9 from second order). Accuracies: equal.
"""
import contextlib

import pytest
import torch

from lightning_metanas import precision
from lightning_metanas import maml
from lightning_metanas.maml import TaskAdapter, TaskAxis, fd_vjp
from lightning_metanas.parallel import Unit
from lightning_metanas.meta_config import MetaConfig
from lightning_metanas.module import MetaNASModule
from lightning_metanas.scoring import score_architectures
from tests.helpers import ARCHS, GROUPED, MODES, SPACE, as_double, flat, small_supernet, task_batch

def _adapters(net, **kwargs):
    per_task = TaskAdapter(net, 0.3, fd_epsilon=1e-6, workers=1, vectorize=False, **kwargs)
    vectorized = TaskAdapter(net, 0.3, fd_epsilon=1e-6, workers=1, vectorize=True, **kwargs)
    return per_task, vectorized


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk", [64, 2], ids=["one stack per arch", "stacks of 2"])
def test_vectorized_meta_batch_gradient_equals_the_per_task_path(mode, chunk):
    net = small_supernet(torch.float64)
    batch = as_double(task_batch(tasks=len(GROUPED), seed=21))
    per_task, vectorized = _adapters(net, max_vectorized_tasks=chunk)
    a = per_task.meta_batch_gradient(GROUPED, batch, 2, mode)
    b = vectorized.meta_batch_gradient(GROUPED, batch, 2, mode)
    assert a.grads.keys() == b.grads.keys()
    torch.testing.assert_close(b.losses, a.losses, rtol=1e-9, atol=0)
    assert torch.equal(b.accuracies, a.accuracies)
    if mode == "finite_difference":
        x, y = flat(b.grads.values()), flat(a.grads[p] for p in b.grads)
        assert ((x - y).norm() / y.norm()).item() < 1e-6
    else:
        for p, g in a.grads.items():
            torch.testing.assert_close(b.grads[p], g, rtol=1e-9, atol=1e-12)


def test_units_group_tasks_by_architecture_in_order_of_first_use():
    net = small_supernet()
    per_task, vectorized = _adapters(net, max_vectorized_tasks=2)
    cpu = torch.device("cpu")
    assert per_task.task_schedule(GROUPED, cpu) == [Unit(a, (t,)) for t, a in enumerate(GROUPED)]
    assert vectorized.task_schedule(GROUPED, cpu) == [
        Unit(ARCHS[0], (0, 2)), Unit(ARCHS[0], (5,)), Unit(ARCHS[1], (1, 4)), Unit(ARCHS[2], (3,)),
    ]
    assert TaskAdapter(net, 0.3).vectorized(cpu) is False  # the CPU default: worker threads
    assert TaskAdapter(net, 0.3).vectorized(torch.device("cuda")) is True
    assert TaskAdapter.from_config(net, MetaConfig(vectorize=True)).vectorized(cpu) is True


@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_vectorized_evaluation_and_scoring_give_the_same_accuracies(arch):
    net = small_supernet(torch.float64)
    tasks = as_double(task_batch(tasks=5, seed=31))
    per_task, vectorized = _adapters(net, max_vectorized_tasks=3)
    a, b = per_task.evaluate_tasks(arch, tasks, 3), vectorized.evaluate_tasks(arch, tasks, 3)
    assert a.accuracy.shape == (5,) and torch.equal(a.accuracy, b.accuracy)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-9, atol=0)
    for t in range(5):  # evaluate_tasks is evaluate, task by task
        one = per_task.evaluate(arch, (tasks[0][t], tasks[1][t]), (tasks[2][t], tasks[3][t]), 3)
        assert one.accuracy == a.accuracy[t] and one.loss == a.loss[t]
    assert score_architectures(per_task, ARCHS, tasks, 3) == score_architectures(vectorized, ARCHS, tasks, 3)
    assert all(p.grad is None for p in net.parameters())


def test_batchnorm_statistics_stay_per_task():
    """A stack of tasks gives each task the logits it gets alone, not those of one batch of
    all their images (the BatchNorm statistics would then be pooled)."""
    net = small_supernet(torch.float64)
    arch, (x, _, _, _) = ARCHS[0], as_double(task_batch(tasks=3, seed=41))
    x = x * torch.tensor([1.0, 3.0, -2.0], dtype=torch.float64).view(3, 1, 1, 1, 1)  # unlike tasks
    adapter = TaskAdapter(net, 0.3)
    alone, params = adapter.subnet(arch)
    stacked, _ = adapter.subnet(arch, TaskAxis(3))
    out = stacked([p.expand(3, *p.shape) for p in params], x)
    for t in range(3):
        torch.testing.assert_close(out[t], alone(params, x[t]), rtol=1e-12, atol=1e-12)
    pooled = alone(params, x.flatten(0, 1)).view_as(out)
    assert not torch.allclose(out, pooled, atol=1e-3)


def test_tasks_per_arch_shares_each_draw_between_consecutive_tasks():
    def module(share, vectorize):
        torch.manual_seed(0)
        return MetaNASModule(ways=5, image_size=14, search_space=SPACE, tasks_per_arch=share,
                             meta=MetaConfig(inner_lr=0.3, inner_steps=2, vectorize=vectorize))

    one, three = module(1, None), module(3, None)
    assert one.step_architectures(6) == one.sampler.sample_batch(one.step_rng(), 6)  # the draws of before
    archs = three.step_architectures(7)
    assert archs[0:3] == [archs[0]] * 3 and archs[3:6] == [archs[3]] * 3 and len(archs) == 7
    assert [archs[0], archs[3], archs[6]] == three.sampler.sample_batch(three.step_rng(), 3)

    batch = task_batch(tasks=6, seed=3)
    steps = {}
    for vectorize in (False, True):
        m = module(3, vectorize)
        with pytest.warns(UserWarning, match="self.log"):
            m.training_step(batch, 0).backward()
        steps[vectorize] = {n: p.grad for n, p in m.supernet.named_parameters() if p.grad is not None}
    assert steps[False].keys() == steps[True].keys()
    for n, g in steps[False].items():
        torch.testing.assert_close(steps[True][n], g, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="model.tasks_per_arch must be an integer >= 1"):
        module(0, None)


def test_meta_config_checks_the_vectorisation_settings():
    assert MetaConfig().vectorize is None and MetaConfig().channels_last is None
    with pytest.raises(ValueError, match="max_vectorized_tasks"):
        MetaConfig(max_vectorized_tasks=0)
    with pytest.raises(ValueError, match="model.meta.vectorize must be true, false or null"):
        MetaConfig(vectorize="yes")


def test_channels_last_is_chosen_per_device():
    net = small_supernet()
    x = torch.randn(5, 1, 14, 14)
    assert TaskAdapter(net, 0.3).in_memory_layout(x).stride(1) == 1  # CPU default: channels-last
    assert TaskAdapter(net, 0.3, channels_last=False).in_memory_layout(x) is x
    assert TaskAdapter(net, 0.3, channels_last=True).in_memory_layout(x).stride(1) == 1


# -- finite differences: IEEE float32 for their passes, no host synchronisation -----------
@pytest.fixture
def tf32_state():
    """Leave torch's TF32 settings as the test found them."""
    saved = precision.tf32_settings()
    yield
    precision.set_tf32_settings(saved)


def _record_settings(monkeypatch):
    seen = []
    gradient = maml.gradient

    def recording(*args, **kwargs):
        seen.append(precision.tf32_settings())
        return gradient(*args, **kwargs)

    monkeypatch.setattr(maml, "gradient", recording)
    return seen


@pytest.mark.parametrize("vectorize", [False, True])
def test_finite_differences_run_in_ieee_float32_and_restore_the_settings(monkeypatch, tf32_state, vectorize):
    net = small_supernet()
    batch = task_batch(tasks=2, seed=5)
    torch.set_float32_matmul_precision("high")  # a user's legacy setting: TF32 matmuls
    before = precision.tf32_settings()
    assert before != precision.IEEE
    seen = _record_settings(monkeypatch)
    adapter = TaskAdapter(net, 0.3, workers=1, vectorize=vectorize)
    adapter.meta_batch_gradient([ARCHS[0]] * 2, batch, 2, "finite_difference")
    units = 1 if vectorize else 2
    # per unit: 2 inner steps as configured, then 2 x (plus, minus) finite-difference passes
    assert seen == ([before] * 2 + [precision.IEEE] * 4) * units
    assert precision.tf32_settings() == before
    assert torch.get_float32_matmul_precision() == "high"  # legacy readers work again
    assert torch.backends.cudnn.allow_tf32 is True

    seen.clear()
    adapter.meta_batch_gradient([ARCHS[0]] * 2, batch, 2, "first_order")
    assert seen and all(s == before for s in seen)  # other modes are left alone


def test_ieee_scope_nests_across_threads_and_survives_errors(tf32_state):
    before = precision.tf32_settings()
    with precision.ieee_float32():
        with precision.ieee_float32():  # a second worker thread entering
            assert precision.tf32_settings() == precision.IEEE
        assert precision.tf32_settings() == precision.IEEE  # still one inside
    assert precision.tf32_settings() == before
    with pytest.raises(RuntimeError, match="boom"), precision.ieee_float32():
        raise RuntimeError("boom")
    assert precision.tf32_settings() == before
    net = small_supernet()
    TaskAdapter(net, 0.3, workers=2).meta_batch_gradient(ARCHS * 2, task_batch(tasks=6), 2, "finite_difference")
    assert precision.tf32_settings() == before


@contextlib.contextmanager
def _counting_host_reads(monkeypatch):
    """Counts the reads that copy a tensor's value to the host (on a GPU each waits for the
    stream): ``item``, ``tolist``, ``bool``, ``float``, ``int``."""
    counts = {"reads": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counts["reads"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    yield counts
    monkeypatch.undo()


@pytest.mark.parametrize("vectorize", [False, True])
def test_finite_differences_read_nothing_back_to_the_host(monkeypatch, vectorize):
    net = small_supernet()
    batch = task_batch(tasks=3, seed=8)
    adapter = TaskAdapter(net, 0.3, workers=1, vectorize=vectorize)
    with _counting_host_reads(monkeypatch) as counts:
        result = adapter.meta_batch_gradient([ARCHS[1]] * 3, batch, 5, "finite_difference")
    assert counts["reads"] == 0
    assert all(torch.isfinite(g).all() for g in result.grads.values())


def test_finite_difference_passes_v_through_where_its_norm_is_zero_or_not_finite():
    net = small_supernet(torch.float64)
    adapter = TaskAdapter(net, 0.3)
    forward, params = adapter.subnet(ARCHS[1])
    x, y = as_double(task_batch(tasks=1))[:2]
    theta = [p.detach() for p in params]
    zero = [torch.zeros_like(p) for p in theta]
    assert all(torch.equal(a, b) for a, b in zip(fd_vjp(forward, theta, zero, (x[0], y[0]), 0.3, 1e-5), zero))
    nan = [torch.full_like(p, float("nan")) for p in theta]
    assert all(torch.isnan(a).all() for a in fd_vjp(forward, theta, nan, (x[0], y[0]), 0.3, 1e-5))


def test_nan_guard_reads_its_verdict_back_once(monkeypatch):
    from callbacks.guards import FiniteLossGuard, NonFiniteLossError

    class Trainer:  # what the guard reads of a trainer
        world_size, global_step, current_epoch, global_rank = 1, 3, 0, 0

        class fit_loop:
            class epoch_loop:
                batch_idx = 3

    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    module.device = torch.device("cpu")
    module(torch.randn(2, 4)).sum().backward()
    guard = FiniteLossGuard()
    guard.on_before_backward(Trainer, module, torch.tensor(0.5))
    with _counting_host_reads(monkeypatch) as counts:
        guard.on_before_optimizer_step(Trainer, module, None)
    assert counts["reads"] == 1
    module[1].bias.grad[0] = float("inf")
    guard.on_before_backward(Trainer, module, torch.tensor(0.5))
    with pytest.raises(NonFiniteLossError, match=r"meta-gradient is not finite \(parameters: 1.bias\)"):
        guard.on_before_optimizer_step(Trainer, module, None)
