"""Issue 3: per-slice metadata and split modes on real ACDC volumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mtlseg.config import DataConfig
from mtlseg.data.metadata import META_FIELDS, case_meta, parse_case_id, pixel_size
from mtlseg.engine.data import prepare_data
from mtlseg.errors import DataError
from tests.conftest import make_acdc_subset


def acdc_cfg(root, **kw) -> DataConfig:
    return DataConfig(path=str(root), image_size=32, augment=False, **kw)


def test_every_slice_carries_its_metadata(acdc_small):
    data = prepare_data(acdc_cfg(acdc_small))
    case = data.dataset.cases[0]
    z, h, w = case.image.shape[:3]
    first = [i for i, m in enumerate(data.train.meta) if m["case_id"] == case.case_id]
    assert len(first) == z
    for k, i in enumerate(first):
        s = data.train[i]
        assert s["patient_id"] == case.case_id.split("_")[0]
        assert s["slice_index"] == k and s["num_slices"] == z
        assert s["position"].item() == pytest.approx(k / (z - 1))
        row = dict(zip(META_FIELDS, s["meta"].tolist(), strict=True))
        assert row["phase"] == int(case.case_id[-2:])
        assert row["patient_number"] == int(case.case_id[7:10])
        assert (row["height"], row["width"]) == (h, w)
        # ACDC's release has an identity affine: pixel size is unknown, not 1 mm
        assert math.isnan(row["pixel_height"]) and math.isnan(row["pixel_width"])


def test_case_id_parsing_and_spacing():
    pattern = DataConfig().case_pattern
    assert parse_case_id("patient012_frame02", pattern) == ("patient012", "frame02")
    assert parse_case_id("case7_day20", pattern) == ("case7", "day20")
    assert parse_case_id("cju0qkwl35piu0993l0dewei2", pattern) == (
        "cju0qkwl35piu0993l0dewei2",
        None,
    )
    affine = np.diag([1.5, 0.7, 8.0, 1.0])
    assert pixel_size(affine) == (1.5, 0.7)
    single = case_meta("img_01", (1, 10, 12), None, pattern).slice_vectors()
    assert math.isnan(single[0, META_FIELDS.index("position")])


def test_patient_split_keeps_patients_apart(tmp_path):
    root = make_acdc_subset(tmp_path / "acdc", patients=5, with_splits=False)
    data = prepare_data(acdc_cfg(root, split_mode="patient", val_fraction=0.4))
    train = {c.split("_")[0] for c in data.split["train"]}
    val = {c.split("_")[0] for c in data.split["val"]}
    assert len(val) == 2 and not train & val
    assert len(data.split["val"]) == 4  # both phases of each val patient


def test_seen_patients_split_holds_out_one_scan_of_training_patients(tmp_path):
    root = make_acdc_subset(tmp_path / "acdc", patients=5)  # its splits.json is not used
    data = prepare_data(acdc_cfg(root, split_mode="seen-patients", val_fraction=0.4))
    assert len(data.split["val"]) == 2 and "seen-patients" in data.split_source
    train_patients = {c.split("_")[0] for c in data.split["train"]}
    for case in data.split["val"]:
        assert case.split("_")[0] in train_patients  # the patient's other phase trains
    assert sorted(data.split["train"] + data.split["val"]) == sorted(
        c.case_id for c in data.dataset.cases
    )


def test_seen_patients_needs_patients_with_two_scans(kvasir_small):
    with pytest.raises(DataError, match="two or more scans"):
        prepare_data(acdc_cfg(kvasir_small, split_mode="seen-patients"))


def test_patient_mode_refuses_a_file_that_mixes_a_patient(acdc_small):
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (acdc_small / "labelsTr").iterdir())
    (acdc_small / "splits.json").write_text(json.dumps({"train": ids[:-1], "val": ids[-1:]}))
    with pytest.raises(DataError, match=r"patient\(s\) \['patient00\d'\] have cases in both"):
        prepare_data(acdc_cfg(acdc_small))
    split = prepare_data(acdc_cfg(acdc_small, split_mode="case")).split
    assert split["val"] == ids[-1:]


def test_case_missing_from_splits_file_is_an_error_unless_allowed(acdc_small):
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (acdc_small / "labelsTr").iterdir())
    (acdc_small / "splits.json").write_text(json.dumps({"train": ids[:2], "val": ids[-2:]}))
    with pytest.raises(DataError, match=r"splits.json: 2 case\(s\) of the dataset are in no split"):
        prepare_data(acdc_cfg(acdc_small))
    data = prepare_data(acdc_cfg(acdc_small, allow_unlisted=True))
    assert {m["case_id"] for m in data.train.meta} == set(ids[:2])


def test_missing_metadata_field_names_the_cases(acdc_small, kvasir_small):
    data = prepare_data(acdc_cfg(acdc_small))
    data.train.require(["position", "phase", "height"], "FiLM", "train")  # all known
    with pytest.raises(DataError, match=r"'pixel_height' needed by FiLM is unknown for 4 case"):
        data.train.require(["pixel_height"], "FiLM", "train")
    kvasir = prepare_data(acdc_cfg(kvasir_small))
    with pytest.raises(DataError, match="single-slice cases have no position"):
        kvasir.train.require(["position"], "tasks.position", "train")
