"""Loaders (folder and nnU-Net raw), splits, metadata, and every bad-input error."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage import io

from mtlseg.config import DataConfig
from mtlseg.data.dataset import SliceDataset
from mtlseg.data.loading import load_dataset, load_dataset_or_raise
from mtlseg.data.sources import discover
from mtlseg.data.splits import resolve_split
from mtlseg.engine.data import prepare_data
from mtlseg.errors import DataError


def _load(path, **kw):
    return load_dataset_or_raise(discover(path), DataConfig(path=str(path), **kw))


def test_jpeg_masks_are_binary_not_256_classes(kvasir_small):
    ds = _load(kvasir_small)
    assert ds.class_names == ["background", "foreground"] and ds.in_channels == 3
    labels = np.unique(np.concatenate([np.unique(c.label) for c in ds.cases]))
    assert set(labels.tolist()) == {0, 1}
    raw = io.imread(next((kvasir_small / "masks").iterdir()))
    assert len(np.unique(raw)) > 2  # the files really are lossy: grey values near edges


def test_threshold_is_configurable(kvasir_small):
    low = sum(c.label.sum() for c in _load(kvasir_small, mask_threshold=20).cases)
    high = sum(c.label.sum() for c in _load(kvasir_small, mask_threshold=230).cases)
    assert low > high > 0


def test_label_index_pngs_and_binary_pngs(tmp_path, kvasir_small):
    for sub in ("images", "masks"):
        (tmp_path / "labels" / sub).mkdir(parents=True)
    for i, img in enumerate(sorted((kvasir_small / "images").iterdir())[:3]):
        shutil.copy(img, tmp_path / "labels" / "images" / img.name)
        mask = np.zeros((256, 256), np.uint8)
        mask[:50, :50], mask[100:, 100:] = 1, 2 + (i % 2)
        io.imsave(tmp_path / "labels" / "masks" / f"{img.stem}.png", mask, check_contrast=False)
    ds = _load(tmp_path / "labels")
    assert ds.class_names == ["background", "class1", "class2", "class3"]
    assert ds.cases[0].label[0, 0, 0] == 1
    # 0/255 PNG masks are binary
    for m in (tmp_path / "labels" / "masks").iterdir():
        io.imsave(m, (io.imread(m) > 0).astype(np.uint8) * 255, check_contrast=False)
    assert _load(tmp_path / "labels").class_names == ["background", "foreground"]


def test_nnunet_volumes_become_slices_with_metadata(acdc_small):
    data = prepare_data(DataConfig(path=str(acdc_small), image_size=32, augment=False))
    assert data.class_names == ["background", "RV", "MYO", "LV"]
    assert data.split_source.endswith("splits.json")
    volume = nib.load(str(next((acdc_small / "labelsTr").iterdir()))).shape
    sample = data.train[3]
    assert sample["image"].shape == (1, 32, 32) and sample["mask"].shape == (32, 32)
    assert sample["slice_index"] == 3 and sample["num_slices"] in {volume[2]} | {
        c.image.shape[0] for c in data.dataset.cases
    }
    val_cases = {m["case_id"] for m in data.val.meta}
    train_cases = {m["case_id"] for m in data.train.meta}
    assert val_cases == set(data.split["val"]) and not (val_cases & train_cases)


def test_per_case_normalisation(acdc_small):
    for mode, check in [
        ("zscore", lambda x: abs(x.mean()) < 2e-3 and abs(x.std() - 1) < 2e-3),
        ("minmax", lambda x: x.min() == 0 and abs(x.max() - 1) < 1e-6),
    ]:
        case = _load(acdc_small, normalization=mode).cases[0]
        assert check(case.image.astype(np.float64)), mode


@pytest.mark.parametrize("mode", ["zscore", "minmax"])
def test_inference_input_resized_first_equals_normalised_first(kvasir_small, acdc_small, mode):
    from mtlseg.data.dataset import model_input
    from mtlseg.data.io import read_volume
    from mtlseg.data.loading import normalise
    from mtlseg.data.resample import resize_image

    for path in (
        next((kvasir_small / "images").iterdir()),  # uint8 RGB
        next((acdc_small / "imagesTr").iterdir()),  # float MRI volume
    ):
        image, _ = read_volume(path)
        reference = resize_image(normalise(image, mode), 24)
        fast = model_input(image, mode, 24)
        assert fast.shape == reference.shape == (image.shape[0], image.shape[-1], 24, 24)
        assert torch.allclose(fast, reference, atol=1e-4), (path, mode)


def test_seeded_split_by_case_is_written_and_reproducible(kvasir_small, tmp_path):
    from mtlseg.engine.data import write_split_file

    cfg = DataConfig(path=str(kvasir_small), val_fraction=0.25, split_seed=3, image_size=32)
    a, b = prepare_data(cfg), prepare_data(cfg)
    assert a.split == b.split and len(a.split["val"]) == 3
    assert (
        a.split
        != prepare_data(DataConfig(path=str(kvasir_small), split_seed=4, image_size=32)).split
    )
    write_split_file(a, tmp_path / "run" / "splits.json")
    written = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert written["val"] == a.split["val"] and "seeded" in written["source"]


def test_slices_of_a_volume_never_straddle(acdc_small):
    (acdc_small / "splits.json").unlink()
    data = prepare_data(DataConfig(path=str(acdc_small), image_size=32, val_fraction=0.3))
    assert not ({m["case_id"] for m in data.train.meta} & {m["case_id"] for m in data.val.meta})


def test_augmentation_moves_image_and_mask_together(kvasir_small):
    from mtlseg.data.transforms import Augment2D

    ds = _load(kvasir_small)
    base = SliceDataset(ds.cases[:1], 64)
    aug = Augment2D("strong")
    image, mask = base.images[0].float(), base.masks[0].long()
    torch.manual_seed(0)
    changed = 0
    for _ in range(10):
        a_img, a_mask, _ = aug(image, mask)
        assert a_img.shape == image.shape and set(a_mask.unique().tolist()) <= {0, 1}
        changed += int(not np.array_equal(a_mask.numpy(), mask.numpy()))
        # a horizontal flip alone maps the mask exactly to the flipped mask
        if np.array_equal(a_img.numpy(), image.flip(-1).numpy()):
            assert np.array_equal(a_mask.numpy(), mask.flip(-1).numpy())
    assert changed > 0


# ---------------------------------------------------------------- bad input
def _problems(path, **kw):
    dataset, problems = load_dataset(discover(path), DataConfig(path=str(path), **kw))
    return problems


def test_corrupt_image_names_the_file(kvasir_small):
    bad = sorted((kvasir_small / "images").iterdir())[2]
    bad.write_bytes(b"not a jpeg at all")
    problems = _problems(kvasir_small)
    assert len(problems) == 1 and str(bad) in problems[0] and "corrupt" in problems[0]


def test_an_image_without_mask_joins_the_unlabelled_pool(kvasir_small, caplog):
    victim = sorted((kvasir_small / "masks").iterdir())[0]
    victim.unlink()
    with caplog.at_level("INFO"):
        index = discover(kvasir_small)
    assert "1 image(s) without a mask join the unlabelled pool" in caplog.text
    record = next(r for r in index.cases if r.case_id == victim.stem)
    assert record.label_file is None


def test_mask_size_differs_from_image(kvasir_small):
    victim = sorted((kvasir_small / "masks").iterdir())[1]
    io.imsave(victim, np.zeros((100, 80), np.uint8), check_contrast=False)
    problems = _problems(kvasir_small)
    assert problems == [
        f"{victim}: mask size 100x80 differs from image size 256x256 ({victim.name})"
    ]


def test_label_value_not_in_dataset_json(acdc_small):
    path = sorted((acdc_small / "labelsTr").iterdir())[0]
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    problems = _problems(acdc_small)
    assert len(problems) == 1 and str(path) in problems[0] and "[7]" in problems[0]


def test_nan_intensities(acdc_small):
    path = sorted((acdc_small / "imagesTr").iterdir())[0]
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[1, 2, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    assert _problems(acdc_small) == [f"{path}: 1 NaN/inf intensity values"]


def test_missing_keys_in_dataset_json(acdc_small):
    meta = json.loads((acdc_small / "dataset.json").read_text())
    del meta["labels"]
    (acdc_small / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"dataset.json: missing keys \['labels'\]"):
        discover(acdc_small)


def test_empty_dataset(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    with pytest.raises(DataError, match="empty dataset"):
        discover(tmp_path)
    with pytest.raises(DataError, match="no dataset found"):
        discover(tmp_path / "images")


@pytest.mark.parametrize(
    "content,message",
    [
        ({"train": ["x"]}, "missing split 'val'"),
        ({"train": [], "val": ["a"]}, "split 'train' is empty"),
    ],
)
def test_missing_or_empty_split(acdc_small, content, message):
    (acdc_small / "splits.json").write_text(json.dumps(content))
    with pytest.raises(DataError, match=message):
        prepare_data(DataConfig(path=str(acdc_small)))


def test_split_naming_unknown_cases(acdc_small):
    (acdc_small / "splits.json").write_text(
        json.dumps({"train": ["patient999_frame01"], "val": ["x"]})
    )
    with pytest.raises(
        DataError, match="names cases not in the dataset: \\['patient999_frame01'\\]"
    ):
        prepare_data(DataConfig(path=str(acdc_small)))


def test_wrong_channel_count_for_the_recipe(kvasir_small):
    problems = _problems(kvasir_small, channels=1)
    assert (
        len(problems) == 12 and "3 channel(s), the recipe expects 1 (data.channels)" in problems[0]
    )


def test_mask_values_like_intensities_are_refused(kvasir_small, tmp_path):
    shutil.copytree(kvasir_small, tmp_path / "png")
    for m in (tmp_path / "png" / "masks").iterdir():
        io.imsave(m.with_suffix(".png"), io.imread(m), check_contrast=False)
        m.unlink()
    with pytest.raises(DataError, match="looks like intensities"):
        _load(tmp_path / "png", mask_mode="labels")


def test_check_data_reports_every_problem(kvasir_small, capsys):
    from mtlseg.cli import main

    files = sorted((kvasir_small / "images").iterdir())
    files[0].write_bytes(b"broken")
    io.imsave(
        kvasir_small / "masks" / files[1].name, np.zeros((10, 10), np.uint8), check_contrast=False
    )
    with pytest.raises(SystemExit, match="2 problem"):
        main(["check-data", str(kvasir_small)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and str(files[0]) in lines[0] and files[1].name in lines[1]


def test_check_data_ok(acdc_small, capsys):
    from mtlseg.cli import main

    assert main(["check-data", str(acdc_small)]) == 0
    out = capsys.readouterr().out
    assert "ok: 6 cases" in out and "['background', 'RV', 'MYO', 'LV']" in out


def test_resolve_split_prefers_given_file(acdc_small):
    ids = [p.name.removesuffix(".nii.gz") for p in (acdc_small / "labelsTr").iterdir()]
    split, source = resolve_split(acdc_small, {c: c.split("_")[0] for c in ids}, DataConfig())
    assert source.endswith("splits.json") and len(split["val"]) == 2


def test_a_split_with_no_patient_in_the_case_ids_says_it_splits_by_image(kvasir_small, capsys):
    """Frames of three videos named vid0_0, vid1_1, ...: the default pattern finds no patient,
    so the patient split is a split by image; check-data says so and how to give patients,
    and the pattern it suggests makes the videos the patients."""
    from mtlseg.cli import main

    (kvasir_small / "splits.json").unlink(missing_ok=True)
    for i, image in enumerate(sorted((kvasir_small / "images").iterdir())):
        name = f"vid{i % 3}_{i}{image.suffix}"
        image.rename(image.with_name(name))
        (kvasir_small / "masks" / image.name).rename(kvasir_small / "masks" / name)
    data = prepare_data(DataConfig(path=str(kvasir_small), image_size=32))
    assert data.split_source.startswith("seeded split by image (no patient id found")
    assert main(["check-data", str(kvasir_small)]) == 0
    out = capsys.readouterr().out
    assert "split: seeded split by image" in out and "data.case_pattern" in out
    named = DataConfig(path=str(kvasir_small), image_size=32, case_pattern="^(?P<patient>[^_]+)_")
    split = prepare_data(named)
    assert split.split_source.startswith("seeded patient split")
    videos = [{c.split("_")[0] for c in split.split[k]} for k in ("train", "val")]
    assert not videos[0] & videos[1]  # no video on both sides
