"""The nnMamba U-Net, its Mamba layer and the DynUNet baseline: shapes, gradients, precision, size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ichseg.models.mamba as mamba_module
from ichseg.config import preset_config
from ichseg.errors import UsageError
from ichseg.models import build_model, check_input_shape
from ichseg.models.baseline import DynUNetBaseline, parameter_count
from ichseg.models.mamba import MambaLayer, causal_depthwise_conv1d, conv_method
from ichseg.models.nnmamba import MICCSS, NnMambaUNet, interpolate_by_matrices

PAPER_PARAMETERS = 15.55e6


def tiny_cfg(name="nnmamba", **model):
    """The `tiny` preset on the fast cpu scan, with model settings overridden."""
    cfg = preset_config("tiny")
    cfg.model.name = name
    cfg.model.scan_backend = "cpu"
    for key, value in model.items():
        setattr(cfg.model, key, value)
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def shapes(outputs):
    return [tuple(o.shape) for o in outputs]


def count_on_meta(cfg) -> int:
    with torch.device("meta"):
        return parameter_count(build_model(cfg))


@pytest.mark.parametrize("name", ["nnmamba", "dynunet"])
def test_training_output_is_full_then_coarser_logits_each_at_its_own_resolution(name):
    # tiny's strides: stem (2,2,1), stages (2,2,1), (2,2,2), (2,2,2).
    net = build(tiny_cfg(name)).train()
    outputs = net(torch.randn(2, 3, 32, 16, 8))
    assert shapes(outputs) == [(2, 2, 32, 16, 8), (2, 2, 16, 8, 8), (2, 2, 8, 4, 8),
                               (2, 2, 4, 2, 4)]


@pytest.mark.parametrize("name", ["nnmamba", "dynunet"])
def test_eval_mode_and_no_deep_supervision_return_one_full_resolution_tensor(name):
    x = torch.randn(1, 3, 16, 16, 8)
    net = build(tiny_cfg(name))
    assert tuple(net.eval()(x).shape) == (1, 2, 16, 16, 8)
    plain = build(tiny_cfg(name, deep_supervision=False)).train()
    out = plain(x)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (1, 2, 16, 16, 8)
    # Every parameter is used, as DistributedDataParallel requires.
    out.sum().backward()
    assert all(p.grad is not None for p in plain.parameters())


@pytest.mark.parametrize("name", ["nnmamba", "dynunet"])
def test_instance_norm_makes_each_sample_independent_of_its_batch_in_training(name):
    torch.manual_seed(1)
    first, other = torch.randn(1, 3, 32, 16, 8), torch.randn(1, 3, 32, 16, 8) * 3 + 1
    for norm, independent in (("instance", True), ("batch", False)):
        net = build(tiny_cfg(name, norm=norm)).train()
        kinds = {type(m).__name__ for m in net.modules()}
        assert not any(k.startswith("InstanceNorm" if norm == "batch" else "BatchNorm")
                       for k in kinds)
        with torch.no_grad():
            alone = net(first)[0]
            batched = net(torch.cat([first, other]))[0][:1]
        assert torch.allclose(alone, batched, atol=1e-5) == independent, norm
    assert (parameter_count(build(tiny_cfg(name, norm="instance")))
            == parameter_count(build(tiny_cfg(name, norm="batch"))))


def test_unknown_norm_is_refused_naming_the_setting():
    with pytest.raises(UsageError, match="model.norm"):
        build(tiny_cfg(norm="layer"))


@pytest.mark.parametrize("name", ["nnmamba", "dynunet"])
def test_odd_but_valid_sizes_with_per_axis_strides(name):
    # Totals 4 x 4 x 2; the levels are 6x10x6, 3x10x6, 3x5x3: odd sizes at every level.
    cfg = tiny_cfg(name, strides=[[2, 2, 1], [2, 1, 1], [1, 2, 2]])
    cfg.data.subtypes = True
    check_input_shape(cfg, (12, 20, 6))
    outputs = build(cfg).train()(torch.randn(1, 3, 12, 20, 6))
    assert shapes(outputs) == [(1, 6, 12, 20, 6), (1, 6, 6, 10, 6), (1, 6, 3, 10, 6)]


@pytest.mark.parametrize("name", ["nnmamba", "dynunet"])
def test_2d_network_takes_slices_and_uses_the_first_two_stride_entries(name):
    cfg = tiny_cfg(name, spatial_dims=2)
    net = build(cfg).train()
    assert not any(isinstance(m, torch.nn.Conv3d) for m in net.modules())
    outputs = net(torch.randn(2, 3, 32, 48))
    assert shapes(outputs) == [(2, 2, 32, 48), (2, 2, 16, 24), (2, 2, 8, 12), (2, 2, 4, 6)]
    assert tuple(net.eval()(torch.randn(1, 3, 32, 16)).shape) == (1, 2, 32, 16)
    # 16 x 16 would leave one voxel at the deepest level, which InstanceNorm cannot normalise.
    with pytest.raises(UsageError, match="one voxel at the network's deepest level"):
        check_input_shape(cfg, (16, 16))
    check_input_shape(tiny_cfg(name, spatial_dims=2, norm="batch"), (16, 16))


def test_shape_error_names_the_axis_the_stride_product_and_the_nearest_valid_sizes():
    cfg = preset_config("default")  # z strides 1, 1, 2, 2
    check_input_shape(cfg, (192, 192, 32))
    with pytest.raises(UsageError, match=r"^patch size 30 along z is not divisible by 4 "
                                         r"\(product of the z strides\); nearest valid: 28 or 32$"):
        check_input_shape(cfg, (192, 192, 30))
    with pytest.raises(UsageError, match=r"patch size 8 along x .* by 16 .* nearest valid: 16$"):
        check_input_shape(cfg, (8, 192, 32))
    with pytest.raises(UsageError, match="needs 3"):
        check_input_shape(cfg, (192, 192))


def test_2d_shape_check_reads_the_first_two_sizes():
    cfg = preset_config("default")
    cfg.model.spatial_dims = 2
    check_input_shape(cfg, (64, 48))
    check_input_shape(cfg, (64, 48, 7))  # data.patch_size has a z entry a 2D network ignores
    with pytest.raises(UsageError, match="along y is not divisible by 16"):
        check_input_shape(cfg, (64, 40))


def test_gradients_reach_every_parameter_including_the_mamba_state_parameters():
    net = build(tiny_cfg()).train()
    x = torch.randn(2, 3, 16, 16, 8)
    labels = torch.randint(0, 2, (2, 16, 16, 8))
    loss = sum(F.cross_entropy(out, F.interpolate(labels[:, None].float(), out.shape[2:])
                               [:, 0].long()) for out in net(x))
    loss.backward()
    names = []
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
        names.append(name)
    for wanted in ("mamba.A_log", "mamba.D", "mamba.dt_proj.weight", "mamba.dt_proj.bias",
                   "mamba.conv1d.weight", "mamba.x_proj.weight"):
        assert any(n.endswith(wanted) for n in names), wanted


# fp16 is what `amp=auto` gives on GPUs without bf16 (Colab's T4).
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_scan_runs_in_float32_under_autocast(monkeypatch, dtype):
    seen = []
    real_scan = mamba_module.selective_scan

    def spy(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        seen.append(({t.dtype for t in tensors}, torch.is_autocast_enabled("cpu")))
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(mamba_module, "selective_scan", spy)
    net = build(tiny_cfg()).eval()
    x = torch.randn(1, 3, 16, 16, 8)
    with torch.no_grad():
        full = net(x)
        with torch.autocast("cpu", dtype=dtype):
            mixed = net(x)
    assert seen and all(dtypes == {torch.float32} and not autocast for dtypes, autocast in seen)
    assert torch.isfinite(mixed).all()
    # Half-precision convolutions move the logits a little, the scan does not blow them up.
    assert (mixed.float() - full).abs().max() < 0.1 * full.abs().max()


def test_default_preset_counts_within_five_percent_of_the_paper():
    count = count_on_meta(preset_config("default"))
    assert abs(count - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.05, count


def test_one_miccss_module_with_one_mamba_layer_is_shared_by_blocks_two_on_of_each_stage():
    with torch.device("meta"):
        net = NnMambaUNet.from_config(preset_config("default"))
    for stage in net.stages:
        first, *rest = list(stage)
        assert first.miccss is None
        assert len(rest) == 2 and all(block.miccss is rest[0].miccss for block in rest)
    mambas = [m for m in net.modules() if isinstance(m, MambaLayer)]  # modules() deduplicates
    assert [m.d_model for m in mambas] == [64, 128, 256]


def test_shared_mamba_layer_runs_once_per_block_on_all_four_flipped_copies():
    cfg = tiny_cfg(blocks_per_stage=3)
    net = build(cfg).train()
    calls = []
    for mamba in (m for m in net.modules() if isinstance(m, MambaLayer)):
        mamba.register_forward_hook(lambda m, inputs, out: calls.append(inputs[0].shape[0]))
    net(torch.randn(2, 3, 16, 16, 8))
    # three stages, blocks 2 and 3 each call their stage's layer once with 4 x batch sequences
    assert calls == [8] * 6


def test_miccss_is_equivariant_to_reversing_the_token_order():
    # The four-way siamese average makes the branch commute with flipping every spatial axis
    # (which reverses the raster token order); one Mamba direction alone does not.
    torch.manual_seed(0)
    block = MICCSS(3, 8, d_state=4, d_conv=4, expand=2, scan_backend="reference").eval()
    x = torch.randn(1, 8, 4, 3, 5)
    axes = (2, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(block(x.flip(axes)), block(x).flip(axes), rtol=1e-5, atol=1e-5)
        tokens = torch.randn(1, 8, 60)
        one_way = block.mamba(tokens.flip(2)) - block.mamba(tokens).flip(2)
    assert one_way.abs().max() > 1e-3


def test_mamba_layer_is_causal_along_the_sequence():
    torch.manual_seed(0)
    layer = MambaLayer(8, d_state=4, scan_backend="reference")
    tokens = torch.randn(2, 8, 20)
    changed = tokens.clone()
    changed[..., 12] += 1.0
    with torch.no_grad():
        before, after = layer(tokens), layer(changed)
    torch.testing.assert_close(before[..., :12], after[..., :12])
    assert (before[..., 12:] - after[..., 12:]).abs().amax(dim=(0, 1)).min() > 0


@pytest.mark.parametrize("method", ["shifted", "conv1d"])
def test_causal_conv_methods_equal_torch_depthwise_conv_with_gradients(method):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(3, 6, 25, requires_grad=True)
    grad = torch.randn(3, 6, 25)
    expected = conv(x)[..., :25]
    got = causal_depthwise_conv1d(x, conv.weight, conv.bias, method)
    torch.testing.assert_close(got, expected)
    wanted = torch.autograd.grad(expected, (x, conv.weight, conv.bias), grad)
    for ours, theirs in zip(torch.autograd.grad(got, (x, conv.weight, conv.bias), grad), wanted,
                            strict=True):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("shape, size", [((2, 3, 5, 4, 3), (10, 8, 3)), ((1, 2, 4, 7), (8, 13))])
def test_interpolation_by_matrices_equals_torch_with_gradients(shape, size):
    # The deterministic path of upsample_to on CUDA, checked here on the CPU.
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    mode = "trilinear" if x.dim() == 5 else "bilinear"
    expected = F.interpolate(x, size=size, mode=mode, align_corners=False)
    got = interpolate_by_matrices(x, size)
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(expected)
    torch.testing.assert_close(torch.autograd.grad(got, x, grad)[0],
                               torch.autograd.grad(expected, x, grad)[0])


def test_causal_conv_method_is_chosen_by_device(monkeypatch):
    assert conv_method(torch.device("cpu")) == "shifted"
    monkeypatch.setattr(mamba_module, "_causal_conv1d_fn", lambda: None)
    assert conv_method(torch.device("cuda")) == "conv1d"
    monkeypatch.setattr(mamba_module, "_causal_conv1d_fn", lambda: object())
    assert conv_method(torch.device("cuda", 0)) == "causal-conv1d"
    assert conv_method(torch.device("cpu")) == "shifted"
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert conv_method(torch.device("cuda")) == "conv1d"


def test_mamba_initialisation_and_no_weight_decay_marks():
    torch.manual_seed(0)
    layer = MambaLayer(64, d_state=16)
    assert layer.dt_rank == 4 and layer.d_inner == 128
    assert layer.in_proj.weight.shape == (256, 64) and layer.out_proj.weight.shape == (64, 128)
    torch.testing.assert_close(torch.exp(layer.A_log.data), torch.arange(1.0, 17.0).repeat(128, 1))
    assert torch.equal(layer.D.data, torch.ones(128))
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    # log-uniform: about half the channels below the geometric mean of the range (0.01)
    assert 0.3 < (dt < 0.01).float().mean() < 0.7

    net = build(tiny_cfg())
    flagged = {n for n, p in net.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert flagged == {f"stages.{i}.1.miccss.mamba.{p}" for i in range(3) for p in ("A_log", "D")}


def test_cpu_scan_backend_gives_the_reference_network_output():
    x = torch.randn(2, 3, 16, 16, 8)
    nets = {}
    for backend in ("reference", "cpu"):
        nets[backend] = build(tiny_cfg(scan_backend=backend), seed=3).train()
    outs = {b: net(x) for b, net in nets.items()}
    for ref, fast in zip(outs["reference"], outs["cpu"], strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_dynunet_baseline_size_matches_the_nnmamba_of_the_same_preset():
    for preset in ("small", "default"):
        cfg = preset_config(preset)
        mamba_count = count_on_meta(cfg)
        cfg.model.name = "dynunet"
        ratio = count_on_meta(cfg) / mamba_count
        assert 0.85 < ratio < 1.15, (preset, ratio)


def test_dynunet_baseline_refuses_fewer_than_two_stages():
    with pytest.raises(UsageError, match="model.strides"):
        DynUNetBaseline(3, 2, [[2, 2, 1], [2, 2, 1]], width=4)
