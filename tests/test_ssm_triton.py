"""The `triton` backend against the `reference` loop, run on the CPU by Triton's interpreter.

The interpreter is slow (milliseconds per step), so the grid of shapes is the `cpu` backend's
with a chunk of 4 steps instead of 64 and lengths to match.
"""

from __future__ import annotations

import os

# `@triton.jit` reads TRITON_INTERPRET when it decorates a function: Triton's own library
# functions (tl.zeros, ...) when triton is imported, ours when triton_scan is. Set here, while
# pytest collects this file, it is in place before anything imports triton.
os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from test_ssm import assert_matches_reference, make_inputs, relative_error  # noqa: E402

from ichseg.models.ssm import available_backends, resolve_backend, selective_scan  # noqa: E402

CHUNK = 4  # the kernels' chunk length in these tests
OPTIONS = {
    "all": dict(z=True, D=True, bias=True, softplus=True),
    "none": dict(z=False, D=False, bias=False, softplus=False),
    "z+bias": dict(z=True, D=False, bias=True, softplus=False),
    "D+softplus": dict(z=False, D=True, bias=False, softplus=True),
}


@pytest.fixture(scope="module")
def kernels():
    pytest.importorskip("triton")
    module = importlib.import_module("ichseg.models.ssm.triton_scan")
    assert module.INTERPRETED, "triton was imported before TRITON_INTERPRET=1 was set"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "_CHUNK", CHUNK)
        yield module


def shapes(block):
    """The `cpu` tests' grid (batch, channels, length, state), for chunk and block sizes."""
    return [
        (1, 1, 1, 1),
        (1, 3, 7, 5),  # state not a power of two
        (2, 2, 9, 16),
        (1, 4, CHUNK, 16),  # exactly one chunk
        (3, 5, CHUNK + 1, 16),  # one step into the second chunk
        (1, 9, 3 * CHUNK + 3, 16),  # odd length
        (2, 2 * block + 3, CHUNK + 2, 16),  # three channel blocks, the last one partial
        (3, 2, 2 * CHUNK + 2, 1),
    ]


@pytest.mark.parametrize("option", OPTIONS)
def test_triton_matches_reference(kernels, option):
    options = OPTIONS[option]
    for seed, shape in enumerate(shapes(kernels._BLOCK_D)):
        assert_matches_reference(make_inputs(*shape, seed=seed, **options), "triton",
                                 options["softplus"])


def test_triton_is_available_and_chosen_only_when_asked_on_the_cpu(kernels):
    assert "triton" in available_backends()
    assert resolve_backend("triton", "cpu") == "triton"
    assert resolve_backend("auto", "cpu") == "cpu"


def test_triton_takes_strided_views_and_fast_decays(kernels):
    # B and C as views split off one projection, u transposed; steps large enough that
    # exp(dt A) underflows.
    inputs = make_inputs(2, 3, 2 * CHUNK + 1, 16, seed=7)
    with torch.no_grad():
        inputs["delta"].mul_(4.0).add_(8.0)
    projection = torch.cat([inputs["B"].detach(), inputs["C"].detach()], dim=1)
    views = dict(inputs, B=projection[:, :16].requires_grad_(),
                 C=projection[:, 16:].requires_grad_(),
                 u=inputs["u"].detach().transpose(1, 2).contiguous().transpose(1, 2)
                 .requires_grad_())
    assert not views["B"].is_contiguous() and not views["u"].is_contiguous()
    assert_matches_reference(views, "triton", softplus=True)


def test_triton_takes_bf16_inputs_and_runs_in_float32(kernels):
    inputs = {k: v.detach() if v is not None else None
              for k, v in make_inputs(1, 3, CHUNK + 3, 4, seed=5).items()}
    expected = selective_scan(**inputs, delta_softplus=True, backend="triton")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(selective_scan(**inputs, delta_softplus=True, backend="triton"),
                           expected)
    halved = dict(inputs, u=inputs["u"].bfloat16(), z=inputs["z"].bfloat16())
    out = selective_scan(**halved, delta_softplus=True, backend="triton")
    assert out.dtype == torch.bfloat16
    float_out = selective_scan(**dict(halved, u=halved["u"].float(), z=halved["z"].float()),
                               delta_softplus=True, backend="reference")
    # Computed in float32 from the bf16 values, rounded to bf16 once at the end.
    assert relative_error(out, float_out) <= 2 ** -8
