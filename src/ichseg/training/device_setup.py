"""Training on a device: the process-wide speed and exactness switches, and the precision
(`training.amp`)."""

from __future__ import annotations

import os

import torch

# cuBLAS picks its workspace per stream in an order that can change results between runs unless
# told a fixed configuration; it reads this when it creates its handle, at the first matrix
# product on the GPU. ":4096:8" is the setting PyTorch's reproducibility notes give.
CUBLAS_WORKSPACE = ":4096:8"


def configure_device(device: torch.device, deterministic: bool) -> None:
    """Set the switches `training.deterministic` decides, before the first CUDA work.

    Off (the default): cuDNN's autotuner on CUDA (`cudnn.benchmark`), which times the
    convolution algorithms for each new input shape once and keeps the fastest; training's patch
    shape is fixed, so this is paid once per run. On: PyTorch's deterministic algorithms, the
    deterministic cuDNN kernels without the autotuner, and a fixed cuBLAS workspace, so that
    a stopped and continued GPU run repeats the same numbers. An operation with no deterministic
    CUDA kernel warns instead of stopping the run (`warn_only`). Every switch is set both ways,
    so a run in the same process as an earlier one does not inherit its choice.
    """
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def amp_policy(setting: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether fp16 needs a GradScaler). CPUs train in fp32."""
    if device.type != "cuda" or setting == "off":
        return None, False
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, False
    return torch.float16, True
