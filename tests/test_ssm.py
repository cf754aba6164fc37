"""The selective scan: the numba `cpu` backend against the `reference` loop, dispatch, errors."""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import numba
import numpy as np
import pytest
import torch

from ichseg.errors import UsageError
from ichseg.models import selective_scan, ssm
from ichseg.models.ssm import SlowScanWarning, available_backends, dispatch, resolve_backend
from ichseg.models.ssm.cpu import _BLOCK, _CHUNK, _exp2_32, _exp32, _softplus32

TOLERANCE = 1e-5  # relative error allowed between cpu and reference, in float32


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-wise relative error: elementwise ratios blow up where a value happens to be ~0.
    (An all-zero expectation, like dA after one step from h = 0, must be matched exactly.)"""
    difference = (actual.double() - expected.double()).norm().item()
    return difference / max(expected.double().norm().item(), 1e-300)


def make_inputs(batch, channels, length, state, *, seed=0, z=True, D=True, bias=True,
                softplus=True):
    """Random scan inputs of Mamba's scales, requiring gradients; absent options are None.
    delta (with delta_bias) is a pre-activation for the softplus, or positive steps without it."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).requires_grad_()

    delta = torch.randn(batch, channels, length, generator=g) * 0.5 - 1.0
    return dict(
        u=rand(batch, channels, length),
        delta=(delta if softplus else torch.nn.functional.softplus(delta)).requires_grad_(),
        # Mamba's A = -exp(A_log), A_log = log(1..N), scaled per channel: decays of many speeds.
        A=(-torch.arange(1, state + 1, dtype=torch.float32).repeat(channels, 1)
           * torch.rand(channels, 1, generator=g).add(0.5)).requires_grad_(),
        B=rand(batch, state, length),
        C=rand(batch, state, length),
        D=rand(channels) if D else None,
        z=rand(batch, channels, length) if z else None,
        # Without the softplus a bias must keep the steps positive, or the scan blows up.
        delta_bias=(rand(channels, scale=0.5) if softplus
                    else torch.rand(channels, generator=g).mul(0.2).requires_grad_())
        if bias else None,
    )


def run_with_grads(inputs, backend, softplus, seed=1):
    """Output, last state and the gradients of every input for fixed random cotangents."""
    out, last = selective_scan(**inputs, delta_softplus=softplus, return_last_state=True,
                               backend=backend)
    g = torch.Generator().manual_seed(seed)
    loss = ((out * torch.randn(out.shape, generator=g)).sum()
            + (last * torch.randn(last.shape, generator=g)).sum())
    names = [k for k, v in inputs.items() if v is not None]
    grads = torch.autograd.grad(loss, [inputs[k] for k in names])
    return out, last, dict(zip(names, grads, strict=True))


def assert_matches_reference(inputs, backend, softplus):
    """Output, last state and every gradient of `backend` within TOLERANCE of `reference`."""
    out, last, grads = run_with_grads(inputs, backend, softplus)
    ref_out, ref_last, ref_grads = run_with_grads(inputs, "reference", softplus)
    assert out.shape == ref_out.shape == inputs["u"].shape
    assert last.shape == ref_last.shape == (*inputs["u"].shape[:2], inputs["A"].shape[1])
    assert relative_error(out, ref_out) <= TOLERANCE
    assert relative_error(last, ref_last) <= TOLERANCE
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad.shape == inputs[name].shape, name
        assert relative_error(grad, ref_grads[name]) <= TOLERANCE, name


SHAPES = [  # (batch, channels, length, state)
    (1, 1, 1, 1),
    (1, 3, 7, 5),  # state not a multiple of the vector width
    (3, 2, 17, 16),
    (1, 4, _CHUNK, 16),  # exactly one chunk
    (3, 5, _CHUNK + 1, 16),  # one step into the second chunk
    (1, 9, 3 * _CHUNK + 11, 16),  # odd length
    (2, 2 * _BLOCK + 3, _CHUNK + 6, 16),  # three channel blocks, the last one partial
    (3, 2, 130, 1),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("options", [
    dict(z=True, D=True, bias=True, softplus=True),
    dict(z=False, D=False, bias=False, softplus=False),
    dict(z=True, D=False, bias=True, softplus=False),
    dict(z=False, D=True, bias=False, softplus=True),
], ids=["all", "none", "z+bias", "D+softplus"])
def test_cpu_matches_reference(shape, options):
    assert_matches_reference(make_inputs(*shape, **options), "cpu", options["softplus"])


def test_non_contiguous_inputs_give_the_same_results():
    # The Mamba layer hands over B and C as views split off one projection, x via chunk().
    inputs = {k: v.detach() for k, v in make_inputs(2, 3, 21, 16, seed=7).items()}
    projection = torch.cat([inputs["B"], inputs["C"]], dim=1)
    views = dict(inputs, B=projection[:, :16], C=projection[:, 16:],
                 u=inputs["u"].transpose(1, 2).contiguous().transpose(1, 2))
    assert not views["B"].is_contiguous() and not views["u"].is_contiguous()
    expected = selective_scan(**inputs, delta_softplus=True, backend="cpu")
    assert torch.equal(selective_scan(**views, delta_softplus=True, backend="cpu"), expected)


def test_fast_decays_that_underflow_match_reference():
    # Large steps make exp(dt * A) fall below float32's normal range; the kernel flushes them
    # to zero where torch returns subnormals, which must not show in the results.
    inputs = make_inputs(2, 3, 40, 16, seed=3)
    with torch.no_grad():
        inputs["delta"].mul_(4.0).add_(8.0)
    assert_matches_reference(inputs, "cpu", softplus=True)


def test_exp32_is_accurate_to_an_ulp_over_float32s_normal_range():
    x = np.linspace(-87.3, 88.0, 200_001, dtype=np.float32)
    exact = np.exp(x.astype(np.float64))
    ours = np.array([_exp32(v) for v in x[::97]], dtype=np.float64)
    assert np.max(np.abs(ours - exact[::97]) / exact[::97]) <= 2 ** -23
    assert _exp32(np.float32(-100.0)) == 0.0


def test_exp2_32_is_accurate_to_an_ulp_over_float32s_normal_range():
    x = np.linspace(-125.9, 127.0, 200_001, dtype=np.float32)[::97]
    exact = np.exp2(x.astype(np.float64))
    ours = np.array([_exp2_32(v) for v in x], dtype=np.float64)
    assert np.max(np.abs(ours - exact) / exact) <= 2 ** -23
    # Below float32's smallest normal number the result is flushed to zero.
    assert _exp2_32(np.float32(-126.5)) == 0.0


def test_softplus32_matches_float64():
    x = np.linspace(-30.0, 30.0, 2_001, dtype=np.float32)
    exact = np.logaddexp(0.0, x.astype(np.float64))
    ours = np.array([_softplus32(v) for v in x], dtype=np.float64)
    assert np.max(np.abs(ours - exact) / exact) <= 2 ** -22


def test_gradients_do_not_depend_on_the_thread_count():
    inputs = make_inputs(2, _BLOCK + 5, 150, 16, seed=4)  # four work items
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        _, _, one = run_with_grads(inputs, "cpu", softplus=True)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        _, _, many = run_with_grads(inputs, "cpu", softplus=True)
    finally:
        numba.set_num_threads(threads)
    for name in one:
        assert torch.equal(one[name], many[name]), name


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_scan_runs_in_float32_under_autocast(backend):
    inputs = {k: v.detach() if v is not None else None
              for k, v in make_inputs(2, 3, 33, 16, seed=5).items()}
    expected = selective_scan(**inputs, delta_softplus=True, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert result.dtype == torch.float32
    assert torch.isfinite(result).all()
    assert torch.equal(result, expected)


def test_output_takes_the_dtype_of_u():
    inputs = {k: v.detach() if v is not None else None
              for k, v in make_inputs(1, 2, 9, 4, seed=6).items()}
    inputs["u"] = inputs["u"].bfloat16()
    out, last = selective_scan(**inputs, return_last_state=True, backend="cpu")
    assert out.dtype == torch.bfloat16
    assert last.dtype == torch.float32


def test_auto_picks_cpu_for_cpu_tensors():
    assert resolve_backend("auto", "cpu") == "cpu"
    assert {"reference", "cpu"} <= set(available_backends())


@pytest.fixture
def machine(monkeypatch):
    """fake(cuda=..., mamba_ssm=..., triton=...): what this process appears to have."""
    def fake(cuda, mamba_ssm, triton, interpreted=False):
        monkeypatch.setattr(dispatch, "_cuda_available", lambda: cuda)
        monkeypatch.setattr(dispatch, "_mamba_ssm_scan", lambda: object() if mamba_ssm else None)
        monkeypatch.setattr(dispatch, "_triton_scan",
                            lambda: SimpleNamespace(INTERPRETED=interpreted) if triton else None)
    return fake


@pytest.mark.parametrize("mamba_ssm, triton, expected", [
    (True, True, "cuda"), (True, False, "cuda"), (False, True, "triton")])
def test_auto_on_cuda_prefers_mamba_ssm_then_triton_without_warning(machine, mamba_ssm, triton,
                                                                     expected):
    machine(cuda=True, mamba_ssm=mamba_ssm, triton=triton)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", "cuda") == expected
        assert resolve_backend("auto", "cpu") == "cpu"
        assert resolve_backend("triton" if triton else "cuda", "cuda:0") != "reference"


def test_auto_on_cuda_takes_triton_under_deterministic_algorithms(machine, monkeypatch):
    machine(cuda=True, mamba_ssm=True, triton=True)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert resolve_backend("auto", "cuda") == "triton"
    machine(cuda=True, mamba_ssm=True, triton=False)
    assert resolve_backend("auto", "cuda") == "cuda"


def test_reference_on_a_gpu_warns_what_it_costs(machine):
    machine(cuda=True, mamba_ssm=False, triton=False)
    with pytest.warns(SlowScanWarning, match="minutes and gigabytes.*Install triton"):
        assert resolve_backend("auto", "cuda") == "reference"
    machine(cuda=True, mamba_ssm=True, triton=True)
    with pytest.warns(SlowScanWarning, match="Python loop"):
        assert resolve_backend("reference", "cuda") == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("reference", "cpu") == "reference"


def test_triton_where_it_cannot_run_names_the_setting(machine):
    machine(cuda=True, mamba_ssm=False, triton=False)
    with pytest.raises(UsageError, match="model.scan_backend 'triton' needs an importable"):
        resolve_backend("triton", "cuda")
    machine(cuda=False, mamba_ssm=False, triton=True)
    assert "triton" not in available_backends()
    with pytest.raises(UsageError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", "cpu")
    with pytest.raises(UsageError, match="model.scan_backend 'triton'"):
        resolve_backend("triton", "cuda")
    machine(cuda=False, mamba_ssm=False, triton=True, interpreted=True)
    assert resolve_backend("triton", "cpu") == "triton"


def test_everything_runs_where_triton_cannot_be_imported(monkeypatch):
    from ichseg.config import preset_config
    from ichseg.models import build_model

    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.delitem(sys.modules, "ichseg.models.ssm.triton_scan", raising=False)
    monkeypatch.delattr(ssm, "triton_scan", raising=False)
    dispatch._triton_scan.cache_clear()
    try:
        assert dispatch._triton_scan() is None
        assert "triton" not in available_backends()
        with pytest.raises(UsageError, match="model.scan_backend 'triton'"):
            resolve_backend("triton", "cpu")
        inputs = make_inputs(1, 3, 9, 4)
        assert torch.equal(selective_scan(**inputs, backend="auto"),
                           selective_scan(**inputs, backend="cpu"))
        cfg = preset_config("tiny")
        model = build_model(cfg).eval()
        with torch.no_grad():
            out = model(torch.randn(1, cfg.in_channels, *cfg.data.patch_size))
        assert torch.isfinite(out if torch.is_tensor(out) else out[0]).all()
    finally:
        dispatch._triton_scan.cache_clear()


def test_cuda_backend_where_it_cannot_run_names_the_setting():
    if "cuda" in available_backends():
        pytest.skip("mamba-ssm runs here")
    with pytest.raises(UsageError, match="model.scan_backend"):
        resolve_backend("cuda", "cpu")
    inputs = make_inputs(1, 2, 5, 4)
    with pytest.raises(UsageError, match="model.scan_backend"):
        selective_scan(**inputs, backend="cuda")


def test_unknown_backend_is_refused():
    with pytest.raises(UsageError, match="model.scan_backend must be one of"):
        selective_scan(**make_inputs(1, 2, 5, 4), backend="numba")


@pytest.mark.parametrize("change, message", [
    (lambda k: k.update(u=k["u"][0]), "u must be"),
    (lambda k: k.update(delta=k["delta"][:, :, :-1]), "delta must have"),
    (lambda k: k.update(A=k["A"][:-1]), "A must be"),
    (lambda k: k.update(B=k["A"]), "B must be .batch, state, length.; the time-invariant"),
    (lambda k: k.update(C=k["C"].unsqueeze(1)), "C must be .batch, state, length.; the time"),
    (lambda k: k.update(B=k["B"][:, :-1]), "B must have shape"),
    (lambda k: k.update(D=k["D"][:-1]), "D must have shape"),
    (lambda k: k.update(z=k["z"][:1]), "z must have"),
    (lambda k: k.update(delta_bias=k["delta_bias"].unsqueeze(0)), "delta_bias must have shape"),
    (lambda k: k.update(u=k["u"][:, :, :0], delta=k["delta"][:, :, :0], B=k["B"][:, :, :0],
                        C=k["C"][:, :, :0], z=k["z"][:, :, :0]), "at least one step"),
])
def test_bad_shapes_name_the_argument(change, message):
    inputs = make_inputs(2, 3, 6, 4)
    change(inputs)
    with pytest.raises(UsageError, match=message):
        selective_scan(**inputs)
