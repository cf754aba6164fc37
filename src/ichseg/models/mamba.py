"""The Mamba layer (Gu & Dao 2023) as nnMamba uses it, channels-first and CPU-friendly.

Same parameters, names and initialisation as mamba-ssm's `Mamba` block, so its checkpoints map
one to one, but the layer reads and writes `(batch, d_model, length)`: the MICCSS branch holds its
feature map channels-first, and keeping that layout end to end means every projection below is a
batched matrix product whose result is already the contiguous `(batch, channels, length)` the
selective scan wants, with no transposes or copies between them.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ichseg.models.ssm import selective_scan
from ichseg.models.ssm.optional import optional_attribute


def mark_no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Flag a parameter that the optimizer must leave out of weight decay.

    The flag is the attribute `_no_weight_decay = True`, the same one mamba-ssm sets: decaying
    A_log pulls the state's decay rates towards exp(0) = 1 and D towards 0, which is not a
    regulariser but a change of the model.
    """
    param._no_weight_decay = True
    return param


def causal_depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            method: str | None = None) -> torch.Tensor:
    """`nn.Conv1d(groups=channels, padding=K-1)` cut to the input's length.

    out[:, d, t] = bias[d] + sum_k weight[d, 0, k] · x[:, d, t - (K-1) + k], zeros before t = 0.
    `method` (by default chosen by x's device, see `conv_method`): `shifted`, K shifted fused
    multiply-adds over the sequence, for CPUs, where the oneDNN depthwise convolution took
    seconds for its backward pass on long sequences (BENCHMARKS.md); `causal-conv1d`, the fused
    CUDA kernel of the package of that name; `conv1d`, PyTorch's (cuDNN's) convolution.
    """
    method = method or conv_method(x.device)
    taps = weight.shape[-1]
    length = x.shape[-1]
    if method == "causal-conv1d":
        return _causal_conv1d_fn()(x, weight[:, 0].to(x.dtype), bias.to(x.dtype))
    if method == "conv1d":
        return F.conv1d(x, weight, bias, padding=taps - 1, groups=x.shape[1])[..., :length]
    padded = F.pad(x, (taps - 1, 0))
    per_channel = weight[:, 0, :, None]  # (channels, K, 1) broadcasts over (batch, channels, L)
    out = torch.addcmul(bias[:, None], per_channel[:, taps - 1], x)
    for k in range(taps - 1):
        out = torch.addcmul(out, per_channel[:, k], padded[..., k:k + length])
    return out


def conv_method(device: torch.device) -> str:
    """The causal convolution for tensors on `device`: on CUDA the causal-conv1d package's
    kernel where it imports, else cuDNN's `conv1d`; elsewhere the `shifted` products. Under
    torch's deterministic algorithms `conv1d` (causal-conv1d's backward sums its weight
    gradient with atomic additions)."""
    if device.type != "cuda":
        return "shifted"
    if _causal_conv1d_fn() is None or torch.are_deterministic_algorithms_enabled():
        return "conv1d"
    return "causal-conv1d"


@functools.lru_cache(maxsize=1)
def _causal_conv1d_fn():
    """causal-conv1d's `causal_conv1d_fn`, or None where it does not import (it needs CUDA)."""
    return optional_attribute("causal_conv1d", "causal_conv1d_fn")


class MambaLayer(nn.Module):
    """Selective state-space layer: `(batch, d_model, length) -> (batch, d_model, length)`.

    in_proj splits into the scan input x and the gate z (each expand·d_model channels); x goes
    through a depthwise causal conv1d and SiLU; x_proj gives per-token (dt, B, C); dt_proj lifts
    dt back to every channel; the selective scan (float32 always) returns (y + D·x)·SiLU(z);
    out_proj maps back to d_model.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 scan_backend: str = "auto"):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.scan_backend = scan_backend

        # Linear modules for mamba-ssm's parameter names and init; forward uses their weights in
        # channels-first matrix products (see the module docstring).
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        # Parameters of the depthwise causal convolution; forward applies them through
        # causal_depthwise_conv1d.
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        # S4D-real initialisation: A = -(1, 2, ..., N) for every channel, stored as its log so
        # that A stays negative (a decaying state) whatever the optimizer does.
        a_init = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = mark_no_weight_decay(nn.Parameter(torch.log(a_init)))
        self.D = mark_no_weight_decay(nn.Parameter(torch.ones(self.d_inner)))
        self._init_dt_proj(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_dt_proj(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """Initial step sizes log-uniform in [dt_min, dt_max], stored through softplus's inverse.

        The scan applies softplus(dt_proj(dt) + bias); with a bias of softplus⁻¹(dt₀) and a small
        weight, every channel starts at its own time scale dt₀, which spreads the channels' memory
        lengths over two decades.
        """
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        # softplus⁻¹(dt) = log(exp(dt) - 1) = dt + log(1 - exp(-dt)), the stable form for small dt.
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, z = torch.matmul(self.in_proj.weight, hidden).chunk(2, dim=1)
        x = F.silu(causal_depthwise_conv1d(x, self.conv1d.weight, self.conv1d.bias))
        dt, b, c = torch.matmul(self.x_proj.weight, x).split(
            [self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = torch.matmul(self.dt_proj.weight, dt)
        # The scan's exponentials and long products lose all precision in bf16/fp16 (Mamba layers
        # are known to give NaN under AMP), so it runs in float32 whatever autocast says.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            y = selective_scan(
                x.float(), delta.float(), -torch.exp(self.A_log.float()), b.float(), c.float(),
                self.D.float(), z=z.float(), delta_bias=self.dt_proj.bias.float(),
                delta_softplus=True, backend=self.scan_backend)
        return torch.matmul(self.out_proj.weight, y.to(x.dtype))
