"""CT preprocessing: windows, canonical orientation, crop, resampling and the way back."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from ichseg.config import DataConfig
from ichseg.data.ct import (
    _open_in_plane,
    head_box,
    preprocess_case,
    resample,
    resample_labels,
    restore_argmax,
    restore_to_native,
    window_channels,
)
from ichseg.data.io import Volume
from ichseg.data.layouts import LABEL_MAPPINGS
from ichseg.errors import UsageError

SHAPE = (48, 40, 14)


def head_scan(shape=SHAPE):
    """A box of brain (30 HU) in a bone shell inside air, off-centre so the crop must move, and a
    two-code hemorrhage blob; returns (HU, codes)."""
    hu = np.full(shape, -1000.0, np.float32)
    hu[6:40, 4:34, 2:12] = 1000.0
    hu[8:38, 6:32, 3:11] = 30.0
    codes = np.zeros(shape, np.uint8)
    codes[20:27, 10:15, 5:8] = 2
    codes[30:33, 25:28, 6:8] = 5
    hu[codes > 0] = 70.0
    return hu, codes


# Voxel -> world maps that are not RAS-ordered: axes permuted, flipped, DICOM-like LPS, tilted.
NON_RAS_AFFINES = {
    "permuted_flipped": np.array([[0, 0, -5.0, 10], [-1.5, 0, 0, 3], [0, 2.0, 0, -7],
                                  [0, 0, 0, 1]]),
    "lps": np.diag([-1.5, -1.5, 5.0, 1.0]),
    "slices_first": np.array([[0, 1.5, 0, 0], [0, 0, 1.5, 0], [5.0, 0, 0, 0], [0, 0, 0, 1]]),
}


def _tilted_affine() -> np.ndarray:
    tilt = np.deg2rad(10)
    rotation = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)],
                         [0, np.sin(tilt), np.cos(tilt)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.5, 1.5, 5.0])
    return affine


NON_RAS_AFFINES["tilted_flipped"] = _tilted_affine()


def native_spacing(affine):
    return sorted(np.linalg.norm(affine[:3, :3], axis=0))


def test_windows_map_level_and_edges_to_the_unit_interval():
    windows = [[40, 80], [80, 200], [600, 2800]]
    hu = np.array([-1000, -20, 0, 40, 80, 180, 600, 2000, 3000], np.float32)
    channels = window_channels(hu, windows)
    assert channels.shape == (3, hu.size) and channels.dtype == np.float32
    np.testing.assert_allclose(channels[0], [0, 0, 0, 0.5, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(channels[1], [0, 0, 0.1, 0.3, 0.5, 1, 1, 1, 1])
    np.testing.assert_allclose(channels[2][[0, 6, 7, 8]], [0, 0.5, 1, 1])
    np.testing.assert_allclose(channels[2][1], (-20 + 800) / 2800, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(NON_RAS_AFFINES))
def test_labels_come_back_on_the_exact_native_grid(name):
    affine = NON_RAS_AFFINES[name]
    hu, codes = head_scan()
    # Target spacing = the native one, in RAS axis order: no interpolation, so the way back must
    # be exact and any error is in the orientation or the crop.
    cfg = DataConfig(spacing=[1.5, 1.5, 5.0] if name != "permuted_flipped" else [5.0, 1.5, 2.0],
                     subtypes=True)
    channels, labels, info = preprocess_case(Volume(hu, affine), Volume(codes, affine), cfg)
    assert info.crop_shape != info.reoriented_shape, "the head should have been cropped"
    assert labels.shape == info.resampled_shape == channels.shape[1:]
    restored = restore_to_native(labels, info)
    assert restored.shape == SHAPE
    np.testing.assert_array_equal(restored, codes)


@pytest.mark.parametrize("name", sorted(NON_RAS_AFFINES))
def test_resampled_blob_returns_to_the_same_voxels(name):
    affine = NON_RAS_AFFINES[name]
    hu, codes = head_scan()
    cfg = DataConfig(spacing=[2.0, 2.0, 4.0])
    channels, labels, info = preprocess_case(Volume(hu, affine), Volume(codes, affine), cfg)
    assert set(np.unique(labels)) == {0, 1}, "binary training labels: any hemorrhage is 1"
    np.testing.assert_allclose(info.spacing, [2.0, 2.0, 4.0], rtol=0.15)
    restored = restore_to_native(labels, info)
    assert restored.shape == SHAPE
    truth = codes > 0
    dice = 2 * np.sum(truth & (restored > 0)) / (truth.sum() + (restored > 0).sum())
    # Two resamplings with nearest neighbour erode a 3-voxel blob; a wrong orientation gives 0.
    assert dice > 0.7
    # The network grid's affine puts the blob where the native affine does (same world mm).
    world = lambda aff, mask: (aff @ np.append(np.argwhere(mask).mean(0), 1))[:3]  # noqa: E731
    np.testing.assert_allclose(world(info.network_affine, labels > 0), world(affine, truth),
                               atol=2.0)


def test_probabilities_restore_with_background_outside_the_crop():
    affine = NON_RAS_AFFINES["permuted_flipped"]
    hu, codes = head_scan()
    cfg = DataConfig(spacing=[6.0, 2.0, 2.5])
    _, labels, info = preprocess_case(Volume(hu, affine), Volume(codes, affine), cfg)
    probabilities = np.stack([1.0 - labels, labels]).astype(np.float32)
    restored = restore_to_native(probabilities, info)
    assert restored.shape == (2, *SHAPE)
    np.testing.assert_allclose(restored.sum(0), 1.0, atol=1e-5)
    # Air far from the head lies outside the crop: certain background there.
    air = restore_to_native(np.ones(info.resampled_shape, np.uint8), info) == 0
    assert air.any()
    assert np.all(restored[0][air] == 1.0) and np.all(restored[1][air] == 0.0)
    hemorrhage = restored[1] > 0.5
    # An argmax map (int64) comes back like the uint8 labels.
    np.testing.assert_array_equal(restore_to_native(labels.astype(np.int64), info),
                                  restore_to_native(labels, info))
    assert 2 * np.sum(hemorrhage & (codes > 0)) / (hemorrhage.sum() + (codes > 0).sum()) > 0.8


@pytest.mark.parametrize("name", sorted(NON_RAS_AFFINES))
@pytest.mark.parametrize("slices", [4.0, 5.0])  # 5.0: the slice axis keeps its size
@pytest.mark.parametrize("classes", [2, 6])
def test_restore_argmax_equals_the_argmax_of_the_whole_restored_map(name, slices, classes):
    affine = NON_RAS_AFFINES[name]
    hu, codes = head_scan()
    _, _, info = preprocess_case(Volume(hu, affine), None,
                                 DataConfig(spacing=[3.0, 2.5, slices]))
    rng = np.random.default_rng(0)
    # Smooth logits where background mostly wins, with another class winning in two separate
    # places, one of them at the grid's edge (where the interpolation clamps).
    logits = ndimage.gaussian_filter(rng.normal(size=(classes, *info.resampled_shape)),
                                     (0, 1, 1, 1))
    logits[0] += 1.0
    logits[1, 2:4, 3:5, 1:3] += 4.0
    logits[-1, -1, -2:, -1] += 4.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    whole = restore_to_native(probabilities.astype(np.float32), info)
    expected = whole.argmax(axis=0)
    labels = restore_argmax(probabilities, info)
    assert labels.shape == SHAPE and labels.dtype == np.uint8
    assert set(np.unique(labels)) >= {0, 1, classes - 1}
    differ = labels != expected
    # The same neighbours with the same weights: only float rounding at a near tie may differ.
    top_two = np.sort(whole, axis=0)[-2:]
    assert np.all(top_two[1][differ] - top_two[0][differ] < 1e-5)
    assert differ.sum() <= 2
    # Background wins everywhere on the network grid: it wins everywhere on the native one.
    certain = np.zeros((classes, *info.resampled_shape), np.float32)
    certain[0] = 1.0
    assert not restore_argmax(certain, info).any()


def test_resampling_a_fortran_ordered_scan_gives_the_c_ordered_result():
    rng = np.random.default_rng(1)
    scan = rng.random((40, 36, 9)).astype(np.float32)
    cropped = np.asfortranarray(scan)[3:37, 2:30, 1:]  # a NIfTI as read, then cropped
    np.testing.assert_allclose(resample(cropped, (15, 11, 6), order=1),
                               resample(np.ascontiguousarray(cropped), (15, 11, 6), order=1),
                               rtol=1e-6, atol=1e-6)


def test_shrinking_an_axis_more_than_1_5x_averages_every_input_voxel():
    rng = np.random.default_rng(3)
    thin = rng.normal(40.0, 20.0, size=(6, 5, 60)).astype(np.float32)
    thin[:, :, 1::2] += 50.0  # a pattern sampling one slice in five would alias
    # 1 mm slices to 5 mm: each output slice is the mean of its five input slices.
    thick = resample(thin, (6, 5, 12), order=1, antialias=True)
    np.testing.assert_allclose(thick, thin.reshape(6, 5, 12, 5).mean(axis=-1), atol=1e-4)
    assert np.abs(resample(thin, (6, 5, 12), order=1) - thick).max() > 20, "linear samples"
    # Any zoom above 1.5, in-plane too: every input voxel counts with the share of it that an
    # output voxel covers, so a constant stays constant and the total is kept.
    for shape in [(3, 2, 17), (6, 3, 60), (2, 5, 23)]:
        out = resample(thin, shape, order=1, antialias=True)
        share = np.prod(np.array(thin.shape) / np.array(shape))
        assert out.sum() * share == pytest.approx(thin.sum(), rel=1e-5)
        np.testing.assert_allclose(resample(np.full(thin.shape, -1000.0, np.float32), shape,
                                            order=1, antialias=True), -1000.0, rtol=1e-6)
    # At 1.5x or less, and when enlarging, resampling stays linear interpolation.
    for shape in [(4, 4, 40), (9, 7, 80), (5, 5, 60)]:
        np.testing.assert_array_equal(resample(thin, shape, order=1, antialias=True),
                                      resample(thin, shape, order=1))


def test_labels_keep_their_volume_when_thin_slices_are_thickened():
    # Lesions of two codes drawn on 1 mm slices and 1 mm pixels, taken to 5 mm slices and 2 mm
    # pixels (zooms 2, 2, 5).
    rng = np.random.default_rng(4)
    shape, target, voxel = (60, 60, 100), (30, 30, 20), 20
    grid = np.stack(np.meshgrid(*(np.arange(n) + 0.5 for n in shape), indexing="ij"), -1)
    lesion_errors, class_errors, class_volumes = [], [], []
    for _ in range(12):
        centre = rng.uniform([25, 25, 30], [35, 35, 70])
        rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        mask = (((grid - centre) @ rotation / rng.uniform(5, 14, size=3)) ** 2).sum(-1) < 1
        codes = np.where(mask, np.uint8(2), np.uint8(0))
        codes[mask & ((grid - centre) @ rng.normal(size=3) > 0)] = 5  # split by a plane
        thick = resample_labels(codes, target)
        assert thick.dtype == np.uint8 and set(np.unique(thick)) <= {0, 2, 5}
        lesion_errors.append(abs(np.sum(thick > 0) * voxel - mask.sum()) / mask.sum())
        for code in (2, 5):
            class_errors.append(np.sum(thick == code) * voxel - np.sum(codes == code))
            class_volumes.append(np.sum(codes == code))
    # Each lesion keeps its volume within a few percent (sampling one slice in five: up to 10 %),
    # and each code keeps its share without drift.
    assert max(lesion_errors) < 0.05
    assert abs(sum(class_errors)) < 0.01 * sum(class_volumes)
    assert np.all(np.abs(class_errors) < 0.2 * np.array(class_volumes))


def test_preprocessing_a_thin_slice_scan_averages_its_slices_and_keeps_the_lesion():
    hu, codes = head_scan((48, 40, 70))
    codes[20:27, 10:15, 3:24] = 2  # 21 slices of 1 mm: 4.2 slices of 5 mm
    affine = np.diag([1.5, 1.5, 1.0, 1.0])
    cfg = DataConfig(spacing=[1.5, 1.5, 5.0], crop_to_head=False)
    channels, labels, info = preprocess_case(Volume(hu, affine), Volume(codes, affine), cfg)
    assert info.resampled_shape == (48, 40, 14)
    # The brain window (40/80: 0 to 80 HU) of the mean of each five slices.
    brain = np.clip(hu.reshape(48, 40, 14, 5).mean(axis=-1) / 80.0, 0.0, 1.0)
    np.testing.assert_allclose(channels[0], brain, atol=1e-5)
    assert np.sum(labels) * 5 == pytest.approx(np.sum(codes > 0), rel=0.1)


def test_in_plane_opening_matches_scipy():
    mask = np.random.default_rng(2).random((30, 25, 4)) > 0.35
    mask[0, :, 0] = mask[:, -1, 1] = True  # edges touching the border
    expected = ndimage.binary_opening(mask, structure=np.ones((3, 3, 1), bool))
    np.testing.assert_array_equal(_open_in_plane(mask), expected)


def test_network_grid_is_in_ras_axis_order():
    hu, _ = head_scan()
    lps = np.diag([-1.5, -1.5, 5.0, 1.0])
    cfg = DataConfig(spacing=[1.5, 1.5, 5.0], crop_to_head=False, windows=[[40, 80]])
    channels, labels, info = preprocess_case(Volume(hu, lps), None, cfg)
    assert labels is None
    np.testing.assert_array_equal(channels[0], window_channels(hu[::-1, ::-1], [[40, 80]])[0])
    assert np.all(np.diag(info.network_affine)[:3] > 0)


def test_crop_keeps_the_whole_head_with_a_margin():
    hu, _ = head_scan((120, 100, 14))
    cfg = DataConfig(spacing=[1.0, 1.0, 5.0])
    _, _, info = preprocess_case(Volume(hu, np.diag([1.0, 1.0, 5.0, 1.0])), None, cfg)
    # Head (bone shell) spans x 6..39, y 4..33, all slices 2..11; 10 mm margin -> 0..49, 0..43.
    assert info.crop_start == (0, 0, 0)
    assert info.crop_stop[0] in range(49, 53) and info.crop_stop[1] in range(43, 47)
    assert info.crop_stop[2] == 14
    uncropped = preprocess_case(Volume(hu, np.diag([1.0, 1.0, 5.0, 1.0])), None,
                                DataConfig(spacing=[1.0, 1.0, 5.0], crop_to_head=False))[2]
    assert uncropped.crop_shape == (120, 100, 14)


def test_a_table_beside_the_head_is_not_kept():
    hu, _ = head_scan((120, 100, 14))
    hu[100:103, :, :] = 200.0  # a thin patient table along one side, away from the head
    _, _, info = preprocess_case(Volume(hu, np.diag([1.0, 1.0, 5.0, 1.0])), None,
                                 DataConfig(spacing=[1.0, 1.0, 5.0]))
    assert info.crop_stop[0] < 60


def test_a_head_like_component_is_cropped_without_a_warning():
    hu, _ = head_scan((120, 100, 14))  # off-centre, yet within the middle of the field of view
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        start, stop = head_box(hu, (1.0, 1.0, 5.0), "centred.nii")
    assert stop[0] < 60


def test_a_split_head_warns_and_keeps_the_whole_scan():
    hu, _ = head_scan()
    hu[22:25] = -1000.0  # an air gap through the head: two halves of about half the body each
    with pytest.warns(UserWarning, match=r"split.nii.*% of the body voxels.*keeping the whole"):
        start, stop = head_box(hu, (1.0, 1.0, 5.0), "split.nii")
    assert (start, stop) == ((0, 0, 0), SHAPE)


def test_a_large_object_beside_the_head_warns_and_keeps_the_whole_scan():
    hu, _ = head_scan((120, 100, 14))
    hu[92:120] = 40.0  # a water-dense block along one edge, larger than the head
    with pytest.warns(UserWarning, match=r"block.nii: .*off its centre.*keeping the whole"):
        _, _, info = preprocess_case(Volume(hu, np.diag([1.0, 1.0, 5.0, 1.0]), path="block.nii"),
                                     None, DataConfig(spacing=[1.0, 1.0, 5.0]))
    assert info.crop_shape == (120, 100, 14)


def test_label_values_outside_the_codes_name_the_file():
    hu, codes = head_scan()
    codes[0, 0, 0] = 9
    label = Volume(codes, np.eye(4), path="labels/case_7.nii.gz")
    with pytest.raises(UsageError, match="case_7.nii.gz"):
        preprocess_case(Volume(hu, np.eye(4)), label, DataConfig())


def test_subtypes_need_a_dataset_with_subtype_labels():
    hu, codes = head_scan()
    binary = Volume((codes > 0).astype(np.uint8) * 255, np.eye(4), path="masks/049.nii")
    with pytest.raises(UsageError, match="data.subtypes"):
        preprocess_case(Volume(hu, np.eye(4)), binary, DataConfig(subtypes=True),
                        LABEL_MAPPINGS["physionet"])
    _, labels, _ = preprocess_case(Volume(hu, np.eye(4)), binary,
                                   DataConfig(spacing=[1.0, 1.0, 1.0]), LABEL_MAPPINGS["physionet"])
    assert set(np.unique(labels)) == {0, 1}
