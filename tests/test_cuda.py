"""On a CUDA GPU: the meta-gradients, evaluation and scoring equal the CPU's, finite
differences stay close to second order with TF32 on, a training run is bit-identical under
``--trainer.deterministic=true``, and adaptation runs on the GPU.

Every test here is marked ``cuda``: skipped where torch sees no CUDA device (CI, the 2-core
development machines), run by ``bench/device_check.sh`` with ``CUDA_REQUIRED=1`` (then a
missing GPU fails them instead of skipping them; see conftest.py). ``device_check.sh
--cpu-dry-run`` runs them on the CPU instead (``METANAS_CUDA_TESTS_ON=cpu``), to check the
script and these tests where there is no GPU; that says nothing about CUDA.

Tolerances: float64 on both devices, CPU per-task path against the GPU's per-task and
vectorised paths: as in test_vectorized.py (``rtol=1e-9``; finite differences: relative
error ``< 1e-6``). Finite differences in float32 with TF32 on: cosine to second order > 0.95
per task (the CPU measured 0.96 to 0.99 on Conv-4, BENCHMARKS.md).
"""
import os

import pytest
import torch
import torch.nn.functional as F

from lightning_metanas import precision
from lightning_metanas.maml import TaskAdapter
from tests.helpers import ARCHS, GROUPED, MODES, as_double, flat, small_supernet, task_batch
from tests.test_train import SYNTHETIC, logs, run

pytestmark = pytest.mark.cuda
CUDA = torch.device(os.environ.get("METANAS_CUDA_TESTS_ON", "cuda"))


def _to(batch, device):
    return tuple(t.to(device) for t in batch)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("vectorize", [False, True], ids=["per task", "vectorised"])
def test_cuda_meta_gradients_equal_the_cpu_ones(mode, vectorize):
    net = small_supernet(torch.float64)
    batch = as_double(task_batch(tasks=len(GROUPED), seed=21))
    cpu = TaskAdapter(net, 0.3, fd_epsilon=1e-6, workers=1, vectorize=False).meta_batch_gradient(GROUPED, batch, 2, mode)
    gpu_net = small_supernet(torch.float64).to(CUDA)
    gpu = TaskAdapter(gpu_net, 0.3, fd_epsilon=1e-6, vectorize=vectorize).meta_batch_gradient(
        GROUPED, _to(batch, CUDA), 2, mode)
    names = {p: n for n, p in net.named_parameters()}
    gpu_grads = {n: gpu.grads[p].cpu() for n, p in gpu_net.named_parameters() if p in gpu.grads}
    cpu_grads = {names[p]: g for p, g in cpu.grads.items()}
    assert cpu_grads.keys() == gpu_grads.keys()
    torch.testing.assert_close(gpu.losses.cpu(), cpu.losses, rtol=1e-9, atol=0)
    assert torch.equal(gpu.accuracies.cpu(), cpu.accuracies)
    if mode == "finite_difference":
        a, b = flat(gpu_grads.values()), flat(cpu_grads[n] for n in gpu_grads)
        assert ((a - b).norm() / b.norm()).item() < 1e-6
    else:
        for n, g in cpu_grads.items():
            torch.testing.assert_close(gpu_grads[n], g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("vectorize", [False, True], ids=["per task", "vectorised"])
def test_cuda_evaluation_gives_the_cpu_accuracies(vectorize):
    net = small_supernet(torch.float64)
    tasks = as_double(task_batch(tasks=5, seed=31))
    gpu_net = small_supernet(torch.float64).to(CUDA)
    for arch in ARCHS:
        a = TaskAdapter(net, 0.3, vectorize=False).evaluate_tasks(arch, tasks, 3)
        b = TaskAdapter(gpu_net, 0.3, vectorize=vectorize).evaluate_tasks(arch, _to(tasks, CUDA), 3)
        assert torch.equal(b.accuracy.cpu(), a.accuracy)
        torch.testing.assert_close(b.loss.cpu(), a.loss, rtol=1e-9, atol=0)


def test_finite_differences_stay_close_to_second_order_with_tf32_on():
    saved = precision.tf32_settings()
    try:
        precision.set_tf32_settings(precision.TF32)  # TF32 convolutions and matmuls, as after a user's opt-in
        net = small_supernet(torch.float32).to(CUDA)
        adapter = TaskAdapter(net, 0.4, fd_epsilon=1e-5, vectorize=False)
        batch = _to(task_batch(tasks=4, seed=9), CUDA)
        for t in range(4):
            support, query = (batch[0][t], batch[1][t]), (batch[2][t], batch[3][t])
            so = flat(adapter.meta_gradient(ARCHS[0], support, query, 1, "second_order").grads)
            fd = flat(adapter.meta_gradient(ARCHS[0], support, query, 1, "finite_difference").grads)
            assert F.cosine_similarity(fd, so, dim=0).item() > 0.95
        assert precision.tf32_settings() == precision.TF32
    finally:
        precision.set_tf32_settings(saved)


@pytest.mark.slow
def test_a_deterministic_gpu_run_is_bit_identical(tmp_path):
    """``--trainer.deterministic=true`` on the GPU: two runs, vectorised tasks (2 per
    architecture), the same weights to the last bit."""
    args = [*SYNTHETIC, f"--trainer.accelerator={'gpu' if CUDA.type == 'cuda' else 'cpu'}", "--trainer.devices=1", "--trainer.deterministic=true",
            "--trainer.max_epochs=2", "--model.tasks_per_arch=2", "--test=false"]
    for name in ("a", "b"):
        run("train.py", *args, *logs(tmp_path, name))
    a = torch.load(tmp_path / "a/version_0/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    b = torch.load(tmp_path / "b/version_0/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_adaptation_runs_on_the_gpu():
    from lightning_metanas.adaptation import FinetuneConfig, TaskSearchConfig, adapt
    from lightning_metanas.data import split_image_folder
    from lightning_metanas.meta_config import MetaConfig
    from lightning_metanas.supernet import SuperNet
    from tests.test_adapt import PLAIN, TINY, toy_meta_state, toy_task

    torch.manual_seed(0)
    supernet = SuperNet(TINY, ways=3).to(CUDA)
    train, val = split_image_folder(toy_task(per_class=8), 0.25, seed=0)
    search = TaskSearchConfig(on_task=True, scorings=4, tasks_per_score=2)
    result = adapt(supernet, MetaConfig(), train, val, PLAIN, search, FinetuneConfig(steps=20, lr=0.01),
                   toy_meta_state(), seed=3)
    assert 0 <= result.val_acc <= 1 and len(result.search.scored) == 4
    # the saved model comes back on the CPU and classifies as it reported
    assert all(t.device.type == "cpu" for t in result.model.net.state_dict().values())
    predictions = result.model.logits(val.images.cpu(), batch_size=1).argmax(-1)
    assert torch.equal(predictions, result.predictions)
