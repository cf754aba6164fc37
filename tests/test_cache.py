"""The preprocessed-case cache: decoded once, keyed by files and settings, written atomically,
read back memory-mapped."""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest

import ichseg.data.inspect
from ichseg.config import DataConfig, preset_config
from ichseg.data.cache import PreprocessedCache, cache_root, load_cases
from ichseg.data.ct import preprocess_case
from ichseg.data.io import read_label, read_nifti
from ichseg.data.layouts import Case, find_cases
from ichseg.errors import UsageError


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("ICHSEG_CACHE", str(folder))
    return folder


@pytest.fixture
def data_cfg():
    cfg = preset_config("tiny").data
    cfg.prepare_workers = 1  # in this process, where `count_decodes` sees the reads
    return cfg


@pytest.fixture
def count_decodes(monkeypatch):
    """Count the image files read from disk (the readers `check_case` uses)."""
    calls = []
    real = ichseg.data.inspect.read_nifti

    def counting(path, *limit):
        calls.append(path)
        return real(path, *limit)

    monkeypatch.setattr(ichseg.data.inspect, "read_nifti", counting)
    return calls


def test_each_case_is_decoded_once_per_dataset(tiny_dataset, cache_dir, data_cfg, count_decodes):
    cases = find_cases(tiny_dataset).cases
    first = load_cases(data_cfg, cases, progress=False)
    assert len(count_decodes) == len(cases)
    # A second load (a new epoch, run or process) reads the cache, not the NIfTI files.
    second = load_cases(data_cfg, cases, progress=False)
    assert len(count_decodes) == len(cases)
    assert [c.case_id for c in first] == [c.case_id for c in cases]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.hu, b.hu)
        np.testing.assert_array_equal(a.label, b.label)
        # Mapped from the entry's files, not read into memory.
        assert isinstance(b.hu, np.memmap) and isinstance(b.label, np.memmap)
        assert b.hu.dtype == np.int16 and b.label.shape == b.hu.shape
    assert len([p for p in cache_dir.iterdir() if p.is_dir()]) == len(cases)
    assert not list(cache_dir.glob(".*")), "no temp files left behind"


def test_several_processes_prepare_the_same_entries(tiny_dataset, tmp_path, cache_dir,
                                                    data_cfg):
    cases = find_cases(tiny_dataset).cases[:3]
    alone = load_cases(data_cfg, cases, progress=False)
    data_cfg.cache_dir, data_cfg.prepare_workers = str(tmp_path / "parallel"), 2
    together = load_cases(data_cfg, cases, progress=False)
    for a, b in zip(alone, together, strict=True):
        assert a.case_id == b.case_id
        np.testing.assert_array_equal(a.hu, b.hu)
        np.testing.assert_array_equal(a.label, b.label)
        for points_a, points_b in zip(a.foreground, b.foreground, strict=True):
            np.testing.assert_array_equal(points_a, points_b)
    assert len(list((tmp_path / "parallel").iterdir())) == len(cases)


def test_stored_foreground_points_are_the_labels_voxels(tiny_dataset, cache_dir, data_cfg):
    cases = load_cases(data_cfg, find_cases(tiny_dataset).cases, progress=False)
    assert any(case.foreground for case in cases), "some synthetic cases have hemorrhage"
    for case in cases:
        for points in case.foreground:
            values = case.label[tuple(points.T)]
            assert np.all(values == values[0]) and values[0] > 0
        assert sum(len(p) for p in case.foreground) == np.count_nonzero(case.label)


def test_cached_case_matches_direct_preprocessing(tiny_dataset, cache_dir, data_cfg):
    case = find_cases(tiny_dataset).cases[0]
    channels, label = PreprocessedCache(data_cfg).load(case)
    direct_channels, direct_label, _ = preprocess_case(read_nifti(case.image),
                                                       read_label(case.label), data_cfg)
    np.testing.assert_array_equal(label, direct_label)
    # Stored as whole HU: at most half a HU off, i.e. 0.5 / width in each window channel.
    widths = np.array([w for _, w in data_cfg.windows], np.float32)[:, None, None, None]
    assert np.all(np.abs(channels - direct_channels) <= 0.5 / widths + 1e-6)


def test_key_follows_the_settings_that_change_the_arrays(tiny_dataset, cache_dir, data_cfg):
    case = find_cases(tiny_dataset).cases[0]
    base = PreprocessedCache(data_cfg).key(case)
    for change in ({"spacing": [3.0, 3.0, 5.0]}, {"crop_to_head": False}, {"subtypes": True}):
        changed = DataConfig(**{**vars(data_cfg), **change})
        assert PreprocessedCache(changed).key(case) != base, change
    # Windows are applied when loading, so a new window reuses the entry but changes channels.
    rewindowed = DataConfig(**{**vars(data_cfg), "windows": [[40.0, 80.0]]})
    assert PreprocessedCache(rewindowed).key(case) == base
    assert PreprocessedCache(rewindowed).load(case)[0].shape[0] == 1


def test_a_rewritten_file_is_a_cache_miss(tiny_dataset, tmp_path, cache_dir, data_cfg,
                                          count_decodes):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    case = find_cases(data).cases[0]
    cache = PreprocessedCache(data_cfg)
    old_key = cache.key(case)
    cache.load(case)
    image = nib.load(case.image)
    hu = np.asanyarray(image.dataobj).copy()
    hu[hu > 1000] = 1000
    nib.save(nib.Nifti1Image(hu, image.affine), case.image)
    stat = case.image.stat()
    os.utime(case.image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache.key(case) != old_key
    channels, _ = cache.load(case)
    assert len(count_decodes) == 2
    assert channels[2].max() <= (1000 + 800) / 2800 + 1e-6


def test_a_broken_entry_is_rebuilt(tiny_dataset, cache_dir, data_cfg, count_decodes):
    case = find_cases(tiny_dataset).cases[1]
    cache = PreprocessedCache(data_cfg)
    good, _ = cache.load(case)
    stored = cache.path(case) / "hu.npy"
    stored.write_bytes(stored.read_bytes()[:200])
    again, _ = cache.load(case)
    np.testing.assert_array_equal(again, good)
    assert len(count_decodes) == 2


def test_cache_folder_setting_wins_over_the_environment(tmp_path, cache_dir, data_cfg):
    assert cache_root(data_cfg) == cache_dir
    chosen = tmp_path / "chosen"
    assert cache_root(DataConfig(**{**vars(data_cfg), "cache_dir": str(chosen)})) == chosen


def test_bad_cases_name_their_file(tiny_dataset, tmp_path, cache_dir, data_cfg):
    case = find_cases(tiny_dataset).cases[0]
    bad_label = tmp_path / "bad_label.nii.gz"
    image = nib.load(case.image)
    codes = np.zeros(image.shape, np.uint8)
    codes[5, 5, 5] = 9
    nib.save(nib.Nifti1Image(codes, image.affine), bad_label)
    with pytest.raises(UsageError, match="bad_label.nii.gz"):
        load_cases(data_cfg, [Case("x", case.image, bad_label)], progress=False)

    shifted = tmp_path / "shifted.nii.gz"
    moved = image.affine.copy()
    moved[0, 3] += 10.0
    nib.save(nib.Nifti1Image(codes * 0, moved), shifted)
    with pytest.raises(UsageError, match="shifted.nii.gz"):
        load_cases(data_cfg, [Case("x", case.image, shifted)], progress=False)

    with pytest.raises(UsageError, match="missing.nii.gz"):
        load_cases(data_cfg, [Case("x", tmp_path / "missing.nii.gz", case.label)],
                   progress=False)
    with pytest.raises(UsageError, match="no label"):
        load_cases(data_cfg, [Case("x", case.image, None)], progress=False)
    assert not cache_dir.exists() or not list(cache_dir.iterdir())
