"""Full float32 precision for the passes that need it: the finite differences of
``finite_difference`` meta-gradients.

On Ampere and Hopper GPUs cuDNN convolutions run in TF32 by default (10-bit mantissa, about
5e-4 relative resolution). A finite difference moves the weights by ``fd_epsilon`` (1e-5) in
total, far below that, so ``theta + eps v`` and ``theta - eps v`` would convolve the same
rounded weights and the Hessian-vector product would be rounding noise. ``ieee_float32``
switches cuDNN convolutions and cuBLAS matrix products to IEEE float32 for the passes it
encloses and restores the settings afterwards. It changes nothing on CPU (the settings are
CUDA's), and costs nothing outside the passes it wraps.

torch >= 2.9 has per-backend ``fp32_precision`` settings (``"ieee"``, ``"tf32"``); older torch
has ``allow_tf32`` flags: whichever this torch has is used. On torch >= 2.9 the block sets the
new API's leaves and puts back exactly what it read, so settings made with the legacy API
(``torch.set_float32_matmul_precision``, ``cudnn.allow_tf32``) read as before once it is left;
inside it, torch refuses to read the legacy flags (it does whenever the two APIs disagree),
which nothing inside does. The block counts who is inside, so CPU worker threads that each
enter it for their own task leave the settings as they found them once the last one leaves.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch

_lock = threading.Lock()
_inside = 0
_saved: Any = None


def _new_api() -> bool:
    conv = getattr(torch.backends.cudnn, "conv", None)
    return conv is not None and hasattr(torch.backends.cuda.matmul, "fp32_precision")


def tf32_settings() -> tuple[Any, ...]:
    """(cuDNN convolutions, cuDNN RNNs, cuBLAS matmul): ``fp32_precision`` strings, or
    (cuDNN, cuBLAS) ``allow_tf32`` booleans on torch before 2.9. cuDNN's RNN setting moves
    with the convolutions' so that torch's legacy ``cudnn.allow_tf32`` stays readable inside
    the block (it raises when the two differ)."""
    if _new_api():
        cudnn = torch.backends.cudnn
        return cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def set_tf32_settings(settings: tuple[Any, ...]) -> None:
    """Put back settings read with ``tf32_settings`` (or set ``IEEE`` / ``TF32``)."""
    if _new_api():
        cudnn = torch.backends.cudnn
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision = settings
    else:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = settings


IEEE: tuple[Any, ...] = ("ieee", "ieee", "ieee") if _new_api() else (False, False)
TF32: tuple[Any, ...] = ("tf32", "tf32", "tf32") if _new_api() else (True, True)  # for measurements


@contextmanager
def ieee_float32() -> Iterator[None]:
    """Convolutions and matrix products in IEEE float32 (no TF32) inside the block."""
    global _inside, _saved
    with _lock:
        if _inside == 0:
            _saved = tf32_settings()
            set_tf32_settings(IEEE)
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                set_tf32_settings(_saved)
