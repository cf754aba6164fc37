"""The `triton` backend against the `reference` loop, run on the CPU by Triton's interpreter, and
its launch plan at the `default` preset's first Mamba stage.

The interpreter is slow, so the exactness tests force small tiles through the plan's own table
(chunks of 4 tokens, 2 channels scanned together, 4 channels per program) and take the `cpu`
backend's grid of shapes with lengths to match.
"""

from __future__ import annotations

import os

import pytest
import torch
from test_ssm import assert_matches_reference, make_inputs, relative_error, run_with_grads
from triton_interpreter import import_interpreted_scan, interpret, record_launches

ENVIRONMENT_BEFORE = os.environ.get("TRITON_INTERPRET")
triton_scan = import_interpreted_scan()
ENVIRONMENT_AFTER = os.environ.get("TRITON_INTERPRET")

from ichseg.models.ssm import (  # noqa: E402
    available_backends,
    resolve_backend,
    selective_scan,
    triton_plan,
)

CHUNK = 4  # the kernels' chunk length in the exactness tests
BLOCK_D = 2  # channels scanned together
GROUP = 4  # channels per program
OPTIONS = {
    "all": dict(z=True, D=True, bias=True, softplus=True),
    "none": dict(z=False, D=False, bias=False, softplus=False),
    "z+bias": dict(z=True, D=False, bias=True, softplus=False),
    "D+softplus": dict(z=False, D=True, bias=False, softplus=True),
}


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    interpret(monkeypatch)


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(triton_plan, "TILE_TABLE", ((1 << 20, CHUNK, BLOCK_D),))
    monkeypatch.setattr(triton_plan, "GROUP_CHANNELS", GROUP)
    # The carry: 2 chunks per dependent step, 16 (channel, state) values per program.
    monkeypatch.setattr(triton_plan, "CARRY_CHUNKS", 2)
    monkeypatch.setattr(triton_plan, "CARRY_BLOCK", 16)


SHAPES = [  # (batch, channels, length, state): the `cpu` tests' grid, for these tiles
    (1, 1, 1, 1),
    (1, 3, 7, 5),  # state not a power of two
    (2, 2, 9, 16),
    (1, 4, CHUNK - 1, 16),  # one partial chunk
    (1, 4, CHUNK, 16),  # exactly one chunk
    (3, 5, CHUNK + 1, 16),  # one step into the second chunk; a partial channel block
    (1, 9, 3 * CHUNK + 3, 16),  # odd length
    (2, 3, 3 * CHUNK + 5, 4),  # four chunks, the last one partial
    (2, 2 * GROUP + 3, CHUNK + 2, 16),  # three channel groups, the last one partial
    (3, 2, 2 * CHUNK + 2, 1),
]


@pytest.mark.parametrize("option", OPTIONS)
def test_triton_matches_reference(small_tiles, option):
    options = OPTIONS[option]
    for seed, shape in enumerate(SHAPES):
        assert_matches_reference(make_inputs(*shape, seed=seed, **options), "triton",
                                 options["softplus"])


def test_triton_is_deterministic(small_tiles):
    inputs = make_inputs(2, GROUP + 1, 2 * CHUNK + 1, 16, seed=3)
    first, second = (run_with_grads(inputs, "triton", softplus=True) for _ in range(2))
    for one, other in zip(first[:2], second[:2], strict=True):
        assert torch.equal(one, other)
    assert first[2].keys() == second[2].keys()
    for name, grad in first[2].items():
        assert torch.equal(grad, second[2][name]), name


def test_the_launches_are_the_plans(small_tiles, monkeypatch):
    shape = (2, GROUP + 1, 2 * CHUNK + 1, 16)  # (batch, channels, length, state)
    launches = record_launches(monkeypatch, triton_scan)
    assert_matches_reference(make_inputs(*shape, seed=4), "triton", softplus=True)
    plan = triton_plan.launch_plan(shape[0], shape[1], shape[2], shape[3])
    assert [launch for launch, _, _ in launches] == [*plan.forward, *plan.backward]
    assert plan.chunks == 3 and plan.groups == 2
    for launch, _, constexprs in launches:
        if launch.walks_tokens:
            assert constexprs["CHUNK"] == CHUNK and constexprs["GROUP"] == GROUP
            assert constexprs["BLOCK_D"] == BLOCK_D and constexprs["BLOCK_N"] == 16
        else:
            assert constexprs["CHUNKS"] == 2 and constexprs["BLOCK"] == 16
            assert launch.sequential == 2 and launch.grid == (-(-(GROUP + 1) * 16 // 16), 2)


def test_every_launch_fills_the_gpu_at_the_default_first_stage(monkeypatch):
    """Batch 2 patches x 4 MICCSS flips, d_inner 128, state 16, 48 x 48 x 32 tokens: the
    launches of a forward and a backward, recorded on meta tensors (nothing runs)."""
    batch, channels, state, length = 8, 128, 16, 73_728
    launches = record_launches(monkeypatch, triton_scan, execute=False)
    shapes = {"u": (batch, channels, length), "delta": (batch, channels, length),
              "A": (channels, state), "B": (batch, state, length), "C": (batch, state, length),
              "D": (channels,), "z": (batch, channels, length), "delta_bias": (channels,)}
    meta = [torch.empty(shape, device="meta", requires_grad=True) for shape in shapes.values()]
    out, last = triton_scan.TritonScan.apply(*meta, True)
    torch.autograd.grad(out.sum() + last.sum(), meta)
    plan = triton_plan.launch_plan(batch, channels, length, state)
    assert [launch for launch, _, _ in launches] == [*plan.forward, *plan.backward]
    assert {launch.kernel for launch in plan.forward + plan.backward} == {
        "chunk_ends", "carry", "chunk_outputs", "chunk_adjoints", "chunk_gradients"}
    for launch in plan.forward + plan.backward:
        if launch.walks_tokens:
            assert launch.warps >= 1024, launch
            assert launch.sequential <= 4096, launch
        else:  # the carry across chunks: narrow, and short
            assert launch.sequential == -(-plan.chunks // plan.carry_chunks) <= 4096, launch


def test_the_interpreter_switch_does_not_leak():
    """Set while the kernels were imported (and by the fixture during each test here), not for
    the test files collected after this one."""
    assert triton_scan.INTERPRETED
    assert ENVIRONMENT_AFTER == ENVIRONMENT_BEFORE


def test_triton_is_available_and_chosen_only_when_asked_on_the_cpu():
    assert "triton" in available_backends()
    assert resolve_backend("triton", "cpu") == "triton"
    assert resolve_backend("auto", "cpu") == "cpu"


def test_triton_takes_strided_views_and_fast_decays(small_tiles):
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


def test_triton_takes_bf16_inputs_and_runs_in_float32(small_tiles):
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
