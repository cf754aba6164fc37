"""Networks: the nnMamba U-Net, its Mamba layer and selective scan, and a DynUNet baseline."""

from __future__ import annotations

from ichseg.models.ssm import selective_scan

__all__ = ["selective_scan", "build_model", "check_input_shape"]


def build_model(cfg):
    """The network the config names, with `cfg.in_channels` inputs and `cfg.num_classes` outputs."""
    if cfg.model.name == "dynunet":
        from ichseg.models.baseline import build_dynunet

        return build_dynunet(cfg)
    from ichseg.models.nnmamba import NnMambaUNet

    return NnMambaUNet.from_config(cfg)


def check_input_shape(cfg, spatial_shape):
    """Raise UsageError, naming the valid sizes, when the strides cannot divide `spatial_shape`."""
    from ichseg.models.nnmamba import check_input_shape as check

    return check(cfg, spatial_shape)
