"""The selective scan of Mamba, with mamba-ssm's `selective_scan_fn` signature and meaning.

For every batch b, channel d and step t, in float32 (also under autocast):

    dt_t = softplus(delta_t + delta_bias)            (softplus only if asked)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t  (a vector over the state, h_{-1} = 0)
    y_t  = C_t . h_t + D * u_t
    out  = y * SiLU(z)                               (if z is given)

Backends, one module each; `dispatch` checks the arguments and picks one:
- `reference`: a plain sequential loop in torch, written to be read; the tests' oracle.
- `cpu`: numba kernels, parallel over (batch, block of channels), states recomputed per chunk
  in the backward.
- `triton`: Triton kernels for any CUDA GPU, parallel over chunks of the sequence too
  (`triton_scan`), imported on first use; triton is optional.
- `cuda`: mamba-ssm's fused kernel, imported only when asked for.
`auto` picks `cpu` for CPU tensors; for CUDA tensors `cuda` where mamba-ssm imports, else
`triton`, else `reference` with a SlowScanWarning.
"""

from __future__ import annotations

from ichseg.models.ssm.dispatch import (
    BACKENDS,
    SlowScanWarning,
    available_backends,
    resolve_backend,
    selective_scan,
)
from ichseg.models.ssm.reference import scan_reference

__all__ = ["BACKENDS", "SlowScanWarning", "available_backends", "resolve_backend",
           "scan_reference", "selective_scan"]
