"""Patch sampling: any batch rebuilt from (seed, epoch, index); shares, foreground, geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ichseg.config import AUGMENTATIONS, preset_config, resolve_config
from ichseg.data.cache import PreparedCase
from ichseg.data.sampling import (
    Augmentation,
    EpochBatches,
    PatchSampler,
    blood_mimic_voxel,
    outside_cavity_voxel,
)
from ichseg.errors import UsageError

# Two channels of the window 0..100 HU: a channel is HU / 100.
WINDOWS = [[50.0, 100.0], [50.0, 100.0]]


def make_cases(count=3, shape=(60, 56, 20), lesion=4, depth=3):
    """Cases whose HU are noise plus the label itself (channels: noise below 0.2, +0.7 on the
    lesion), so alignment can be checked; one small box lesion per case (none in the last)."""
    rng = np.random.default_rng(7)
    cases = []
    for k in range(count):
        label = np.zeros(shape, np.uint8)
        if k < count - 1:
            x, y, z = 10 + 12 * k, 30, 8
            label[x:x + lesion, y:y + lesion, z:z + depth] = 1 + k
        noise = rng.integers(0, 21, shape)
        hu = (noise + 70 * (label > 0)).astype(np.int16)
        cases.append(PreparedCase(f"case_{k}", hu, label))
    return cases


def config(augment=True, batch_size=4, patch=(24, 24, 8), spatial_dims=3,
           foreground_fraction=0.33, spacing=(1.0, 1.0, 5.0), windows=WINDOWS):
    cfg = preset_config("tiny")
    cfg.data.windows = [list(w) for w in windows]
    cfg.data.augment = augment
    cfg.data.patch_size = list(patch)
    cfg.data.spacing = list(spacing)
    cfg.data.foreground_fraction = foreground_fraction
    cfg.training.batch_size = batch_size
    cfg.model.spatial_dims = spatial_dims
    return cfg


def assert_same(a, b):
    """Bit-identical images and labels (torch.equal also checks shape and dtype)."""
    assert a[0].dtype == b[0].dtype and a[1].dtype == b[1].dtype
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_any_batch_is_rebuilt_without_drawing_the_earlier_ones():
    cases, cfg = make_cases(), config(augment=True)
    replayed = PatchSampler(cases, cfg, seed=3)
    for epoch in (1, 2):
        for step in range(4):
            replayed.batch(epoch, step)
    late = replayed.batch(3, 2)
    fresh = PatchSampler(make_cases(), cfg, seed=3)
    assert_same(fresh.batch(3, 2), late)
    assert_same(fresh.batch(3, 2), late)  # and drawing it twice changes nothing
    other_epoch, other_seed = fresh.batch(4, 2), PatchSampler(cases, cfg, seed=4).batch(3, 2)
    assert not torch.equal(other_epoch[0], late[0])
    assert not torch.equal(other_seed[0], late[0])


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_rank_shares_concatenate_to_the_single_process_batch(spatial_dims):
    sampler = PatchSampler(make_cases(), config(spatial_dims=spatial_dims), seed=0)
    whole = sampler.batch(2, 5)
    for world_size in (2, 4):
        shares = [sampler.batch(2, 5, rank, world_size) for rank in range(world_size)]
        assert_same((torch.cat([s[0] for s in shares]), torch.cat([s[1] for s in shares])),
                    whole)
    with pytest.raises(UsageError, match="training.batch_size"):
        sampler.batch(2, 5, 0, 3)


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_batch_shapes_and_types(spatial_dims):
    sampler = PatchSampler(make_cases(), config(spatial_dims=spatial_dims), seed=0)
    images, labels = sampler.batch(1, 0)
    patch = (24, 24, 8)[:spatial_dims]
    assert images.shape == (4, 2, *patch) and images.dtype == torch.float32
    assert labels.shape == (4, 1, *patch) and labels.dtype == torch.int64


def holds_lesion(sampler, epoch, index):
    return bool(np.any(sampler.sample(epoch, index)[1] > 0))


@pytest.mark.parametrize("batch_size,fraction,forced", [(4, 0.33, [3]), (2, 0.33, [1]),
                                                        (2, 0.5, [1]), (4, 0.5, [2, 3]),
                                                        (4, 1.0, [0, 1, 2, 3]), (4, 0.0, [])])
def test_the_last_patches_of_every_batch_are_centred_on_hemorrhage(batch_size, fraction, forced):
    # Lesions of 4 x 4 x 3 voxels in 60 x 56 x 20 cases: a random 24 x 24 x 8 patch rarely holds
    # one, so the patches that do are (nearly all) the forced ones, in every batch.
    sampler = PatchSampler(make_cases(), config(augment=False, batch_size=batch_size,
                                                foreground_fraction=fraction), 0)
    batches = 15
    hits = np.array([[holds_lesion(sampler, 2, step * batch_size + j) for j in range(batch_size)]
                     for step in range(batches)])
    for j in range(batch_size):
        if j in forced:
            assert hits[:, j].all(), (j, hits[:, j])
        else:
            assert hits[:, j].mean() < 0.35, (j, hits[:, j])
    # The rule is on the global position in the batch: under two ranks the last one's share
    # holds the forced patches.
    if batch_size == 2 and forced:
        assert all(torch.any(sampler.batch(2, step, 1, 2)[1] > 0) for step in range(batches))


def test_a_batch_of_one_patch_draws_foreground_with_the_setting_as_probability():
    sampler = PatchSampler(make_cases(), config(augment=False, batch_size=1,
                                                foreground_fraction=0.5), 0)
    share = np.mean([holds_lesion(sampler, 1, i) for i in range(160)])
    assert 0.4 <= share <= 0.7, share


def head_with_neck(cavity=True):
    """Air around a cranial cavity of brain (20 HU, channels 0.2) above a neck of muscle (40 HU,
    0.4) outside it, in the lowest 4 of 20 slices; no hemorrhage."""
    shape = (60, 56, 20)
    hu = np.full(shape, -1000, np.int16)
    inside = np.zeros(shape, bool)
    inside[10:50, 10:46, 6:20] = True
    hu[inside] = 20
    hu[10:50, 10:46, 0:4] = 40
    return PreparedCase("head", hu, np.zeros(shape, np.uint8), [], inside if cavity else None)


def test_outside_cavity_voxels_lie_in_the_body_outside_the_cavity():
    case, rng = head_with_neck(), np.random.default_rng(0)
    voxels = [outside_cavity_voxel(case, rng) for _ in range(50)]
    assert all(v is not None for v in voxels)  # the neck is 1 in 12 voxels
    for voxel in filter(lambda v: v is not None, voxels):
        assert case.hu[tuple(voxel)] == 40 and not case.cavity[tuple(voxel)]
    assert outside_cavity_voxel(head_with_neck(cavity=False), rng) is None


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_background_patches_are_drawn_outside_the_cavity_by_the_setting(spatial_dims):
    def neck_share(fraction, cavity=True):
        cfg = config(augment=False, foreground_fraction=0.0, spatial_dims=spatial_dims)
        cfg.data.outside_cavity_fraction = fraction
        sampler = PatchSampler([head_with_neck(cavity)], cfg, 0)
        return np.mean([np.any(np.isclose(sampler.sample(1, i)[0], 0.4)) for i in range(60)])

    assert neck_share(1.0) > 0.9  # a missed search falls back to a random patch
    assert neck_share(0.0) < 0.5
    assert neck_share(1.0, cavity=False) < 0.5  # no cavity found: random patches


def head_with_mimics(cavity=True):
    """A cranial cavity of brain (30 HU) inside a skull (1000 HU) with, inside it, a venous sinus
    of 60 HU (3 x 3 voxels, along z), a labelled hemorrhage of 70 HU and a denser clot of 120 HU;
    outside it, a scalp haematoma of 70 HU. Only the sinus is a blood mimic."""
    shape = (60, 56, 20)
    hu = np.full(shape, 1000, np.int16)
    hu[:4] = 70  # the scalp haematoma, outside the cavity
    inside = np.zeros(shape, bool)
    inside[8:52, 8:48, :] = True
    hu[inside] = 30
    hu[40:43, 20:23, :] = 60
    hu[12:14, 12:14, :] = 120  # denser than fresh blood: a calcification
    label = np.zeros(shape, np.uint8)
    label[20:26, 30:36, 5:10] = 1
    hu[label > 0] = 70
    return PreparedCase("head", hu, label, [], inside if cavity else None)


def test_blood_mimics_are_unlabelled_blood_dense_voxels_inside_the_cavity():
    case, rng = head_with_mimics(), np.random.default_rng(0)
    voxels = [blood_mimic_voxel(case, rng) for _ in range(40)]
    # The sinus is 9 of the 67,200 voxels of a slice; 4,096 tries find it nearly every time.
    assert sum(v is not None for v in voxels) >= 30
    for voxel in filter(lambda v: v is not None, voxels):
        assert case.hu[tuple(voxel)] == 60, voxel
    assert blood_mimic_voxel(head_with_mimics(cavity=False), rng) is None


def test_background_patches_are_centred_on_blood_mimics_by_the_setting():
    def centred_on_sinus(fraction):
        cfg = config(augment=False, foreground_fraction=0.0, windows=[[50.0, 100.0]])
        cfg.data.outside_cavity_fraction, cfg.data.mimic_fraction = 0.0, fraction
        sampler = PatchSampler([head_with_mimics()], cfg, 0)
        # The window maps 60 HU to 0.6; a patch cut within a quarter patch of the sinus holds
        # it within the middle half of the patch.
        return np.mean([np.isclose(sampler.sample(1, i)[0][0, 6:18, 6:18], 0.6).any()
                        for i in range(40)])

    assert centred_on_sinus(1.0) > 0.9
    assert centred_on_sinus(0.0) < 0.6


def test_foreground_patches_cover_every_class_of_a_case():
    # Subtype classes are drawn uniformly, as nnU-Net does, so a small class is not starved.
    label = np.zeros((60, 56, 20), np.uint8)
    label[5:45, 5:45, 2:18] = 2
    label[50:52, 50:52, 10:12] = 5
    case = PreparedCase("mixed", np.zeros(label.shape, np.int16), label)
    sampler = PatchSampler([case], config(augment=False, foreground_fraction=1.0), 0)
    with_small_class = [np.any(sampler.sample(1, i)[1] == 5) for i in range(60)]
    assert 0.3 < np.mean(with_small_class) < 0.7


def test_cases_smaller_than_the_patch_are_padded_with_air():
    label = np.zeros((10, 12, 4), np.uint8)
    label[4:6, 4:6, 1:3] = 1
    image = np.full((10, 12, 4), 50, np.int16)
    # The bone window maps 0 HU to 0.29: the padding must be air in the window, not 0 HU.
    bone = [[600.0, 2800.0]]
    inside = np.float32((50 + 800) / 2800)
    sampler = PatchSampler([PreparedCase("small", image, label)],
                           config(augment=False, patch=(16, 16, 8), windows=bone), 0)
    for index in range(6):
        patch_image, patch_label = sampler.sample(1, index)
        assert patch_image.shape == (1, 16, 16, 8)
        assert np.sum(np.isclose(patch_image, inside)) == image.size  # the whole case, once
        assert np.sum(patch_image == 0.0) == patch_image.size - image.size
        assert patch_label.sum() == label.sum()


GEOMETRY_ONLY = Augmentation(rotate_probability=1.0, scale_probability=1.0,
                             in_plane_degrees=30.0, out_of_plane_degrees=10.0,
                             brightness_probability=0.0, contrast_probability=0.0,
                             gamma_probability=0.0, noise_probability=0.0,
                             blur_probability=0.0, low_resolution_probability=0.0,
                             inverted_gamma_probability=0.0)


@pytest.mark.parametrize("spatial_dims,spacing", [(3, (1.0, 1.0, 5.0)), (3, (1.0, 1.0, 1.5)),
                                                  (2, (1.0, 1.0, 5.0))])
def test_rotated_and_scaled_patches_keep_image_and_label_aligned(spatial_dims, spacing):
    # Lesions of 10 x 10 x 6 voxels: zoomed out by 0.7 they still span several slices, so the
    # image's partial-volume border stays a small part of them.
    lesion_cases = make_cases(shape=(60, 56, 20), lesion=10, depth=6)
    cfg = config(augment=True, spatial_dims=spatial_dims, spacing=spacing,
                 foreground_fraction=1.0)
    augmented = PatchSampler(lesion_cases, cfg, 0, augmentation=GEOMETRY_ONLY)
    plain = PatchSampler(lesion_cases, config(augment=False, spatial_dims=spatial_dims,
                                              spacing=spacing, foreground_fraction=1.0), 0)
    changed = 0
    for index in range(8):
        image, label = augmented.sample(1, index)
        changed += not np.array_equal(label, plain.sample(1, index)[1])
        # The image carries the label (+0.7) over noise below 0.2: they must coincide.
        lesion = label > 0
        assert lesion.any()
        bright = image[0] > 0.55
        assert np.sum(bright & lesion) / np.sum(bright | lesion) > 0.8
        assert image.min() >= 0.0 and image.max() <= 0.9 + 1e-5
    assert changed >= 6, "geometry augmentation should move most patches"


def test_augmentation_keeps_channels_in_range_and_varies_patches():
    cases, cfg = make_cases(), config(augment=True)
    augmented, plain = PatchSampler(cases, cfg, 0), PatchSampler(cases, config(augment=False), 0)
    images, _ = augmented.batch(1, 0)
    flipped_or_changed = sum(not torch.equal(a, p) for a, p in zip(
        augmented.batch(1, 1)[0], plain.batch(1, 1)[0], strict=True))
    assert flipped_or_changed >= 2
    assert images.min() >= -0.5 and images.max() <= 1.5  # noise may leave [0, 1] slightly


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_a_transform_switched_off_leaves_every_other_draw_alone(name):
    # Each transform draws from its own stream: with its probability 0 it draws its coin and
    # nothing happens, which must give the very patches of the list without it.
    always = Augmentation(**{f"{name}_probability": 0.0})
    with_it = PatchSampler(make_cases(), config(augment=True), 0, augmentation=always)
    cfg = config(augment=True)
    cfg.data.augmentations = [other for other in AUGMENTATIONS if other != name]
    without = PatchSampler(make_cases(), cfg, 0, augmentation=always)
    for step in range(3):
        assert_same(with_it.batch(1, step), without.batch(1, step))


def only(name, **settings):
    """A config whose one transform is `name`, and an Augmentation applying it to every patch."""
    cfg = config(augment=True, **settings)
    cfg.data.augmentations = [name]
    probabilities = {f"{other}_probability": float(other == name) for other in AUGMENTATIONS}
    return cfg, probabilities


def total_variation(image):
    return sum(np.abs(np.diff(image, axis=axis)).sum() for axis in range(1, image.ndim))


def test_blur_smooths_channels_and_leaves_labels():
    cfg, probabilities = only("blur")
    blur = PatchSampler(make_cases(), cfg, 0, augmentation=Augmentation(
        **probabilities, blur_channel_probability=1.0))
    plain = PatchSampler(make_cases(), config(augment=False), 0)
    for index in range(4):
        (blurred, label), (image, plain_label) = blur.sample(1, index), plain.sample(1, index)
        assert np.array_equal(label, plain_label)
        assert total_variation(blurred) < 0.7 * total_variation(image)
        assert abs(blurred.mean() - image.mean()) < 0.02


@pytest.mark.parametrize("spacing,across_slices", [((1.0, 1.0, 5.0), False),
                                                   ((1.0, 1.0, 1.0), True)])
def test_low_resolution_coarsens_in_plane_for_thick_slices(spacing, across_slices):
    # HU varying only along z (a constant per slice): zooming each thick slice in-plane keeps it,
    # a 3D zoom of near-isotropic voxels blends the slices.
    shape = (60, 56, 20)
    hu = np.broadcast_to((np.arange(20) * 5).astype(np.int16), shape).copy()
    layered = [PreparedCase("layers", hu, np.zeros(shape, np.uint8))]
    cfg, probabilities = only("low_resolution", spacing=spacing, foreground_fraction=0.0)
    zoomed = PatchSampler(layered, cfg, 0, augmentation=Augmentation(
        **probabilities, low_resolution_channel_probability=1.0, low_resolution_zoom=(0.5, 0.5)))
    plain = PatchSampler(layered, config(augment=False, spacing=spacing,
                                         foreground_fraction=0.0), 0)
    image, reference = zoomed.sample(1, 0)[0], plain.sample(1, 0)[0]
    assert np.allclose(image, reference, atol=1e-6) != across_slices
    # And on noise, the thick-slice zoom does coarsen each slice.
    noisy = PatchSampler(make_cases(), only("low_resolution", foreground_fraction=0.0)[0], 0,
                         augmentation=Augmentation(**probabilities,
                                                   low_resolution_channel_probability=1.0))
    unzoomed = PatchSampler(make_cases(), config(augment=False, foreground_fraction=0.0), 0)
    coarse, fine = noisy.sample(1, 0)[0], unzoomed.sample(1, 0)[0]
    assert total_variation(coarse) < 0.8 * total_variation(fine)


def test_inverted_gamma_bends_the_bright_end_and_keeps_the_range():
    cfg, probabilities = only("inverted_gamma")
    bent = PatchSampler(make_cases(), cfg, 0, augmentation=Augmentation(**probabilities))
    plain = PatchSampler(make_cases(), config(augment=False), 0)
    for index in range(4):
        image, reference = bent.sample(1, index)[0], plain.sample(1, index)[0]
        # 1 - (1 - x) ** g with one g for the patch: 0 stays 0, the order of values is kept, and
        # g is recovered alike from every voxel.
        assert np.all(image[reference == 0] == 0)
        inside = (reference > 0.05) & (reference < 0.95)
        gammas = np.log1p(-image[inside]) / np.log1p(-reference[inside])
        assert np.ptp(gammas) < 1e-3 and 0.7 - 1e-4 <= gammas.mean() <= 1.5 + 1e-4
        assert abs(gammas.mean() - 1.0) > 1e-3


def test_augmentations_setting_names_known_transforms():
    cfg = resolve_config("tiny", sets=["data.augmentations=[flip, blur]"])
    assert cfg.data.augmentations == ["flip", "blur"]
    with pytest.raises(UsageError, match="data.augmentations.*elastic"):
        resolve_config("tiny", sets=["data.augmentations=[flip, elastic]"])


def test_epoch_batches_serve_a_dataloader_from_mid_epoch():
    sampler = PatchSampler(make_cases(), config(batch_size=2), 0)
    dataset = EpochBatches(sampler, epoch=5, start_step=3, steps=4)
    assert len(dataset) == 4
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=0)
    for k, served in enumerate(loader):
        assert_same(served, sampler.batch(5, 3 + k))
    with pytest.raises(IndexError):
        dataset[4]


def test_sampler_refuses_no_cases():
    with pytest.raises(UsageError, match="no training cases"):
        PatchSampler([], config(), 0)

