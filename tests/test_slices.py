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


# --- samplers, tasks, FiLM, Big UNet on real ACDC volumes -----------------------------------

import logging  # noqa: E402

import torch  # noqa: E402

from mtlseg.data.metadata import META_FIELDS as FIELDS  # noqa: E402
from mtlseg.data.samplers import AdjacentPairBatchSampler  # noqa: E402
from mtlseg.engine.data import train_loader  # noqa: E402
from mtlseg.engine.module import build_model_and_tasks  # noqa: E402
from mtlseg.errors import ConfigError, TrainingError  # noqa: E402
from mtlseg.models import build_backbone  # noqa: E402
from mtlseg.models.resnet import ResNetEncoder  # noqa: E402
from mtlseg.settings import load_config  # noqa: E402
from mtlseg.tasks.slices import info_nce  # noqa: E402

TINY_SMALL = ["model.params.channels=[4,8,16]", "data.image_size=32"]


@pytest.fixture(scope="module")
def acdc_data(tmp_path_factory):
    root = make_acdc_subset(tmp_path_factory.mktemp("acdc"), patients=4)
    return prepare_data(acdc_cfg(root))


@pytest.mark.parametrize("single_patient", [True, False])
def test_pair_batches_are_truly_adjacent_slices(acdc_data, single_patient):
    meta = acdc_data.train.meta
    sampler = AdjacentPairBatchSampler(meta, batch_size=8, seed=0, single_patient=single_patient)
    seen, mixed = set(), False
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for batch in batches:
            assert len(batch) % 2 == 0 and len(batch) >= 4 and len(set(batch)) == len(batch)
            for a, b in zip(batch[::2], batch[1::2], strict=True):
                assert meta[a]["case_id"] == meta[b]["case_id"]
                assert abs(meta[a]["slice_index"] - meta[b]["slice_index"]) == 1
                seen.add(
                    frozenset((meta[a]["slice_index"], meta[b]["slice_index"], meta[a]["case_id"]))
                )
            patients = {meta[i]["patient_id"] for i in batch}
            if single_patient:
                assert len(patients) == 1
            mixed |= len(patients) > 1
    assert mixed != single_patient  # the other sampler does mix patients
    odd = [c for c in {m["case_id"] for m in meta} if meta_count(meta, c) % 2]
    if odd:  # odd volumes shift their pairing between epochs: (1,2) is a positive too
        assert any(frozenset((1, 2, odd[0])) == p for p in seen)


def meta_count(meta, case_id):
    return sum(m["case_id"] == case_id for m in meta)


def test_patient_with_fewer_slices_than_a_batch_gives_a_smaller_batch(acdc_data, caplog):
    meta = acdc_data.train.meta
    with caplog.at_level(logging.WARNING):
        sampler = AdjacentPairBatchSampler(meta, batch_size=256, seed=0)
    assert "have fewer than 128 adjacent pairs" in caplog.text
    batches = list(sampler)
    patients = sorted({m["patient_id"] for m in meta})
    assert len(batches) == len(patients)  # one batch per patient, holding all its pairs
    for batch in batches:
        (patient,) = {meta[i]["patient_id"] for i in batch}
        pairs = sum(
            meta_count(meta, c) // 2
            for c in {m["case_id"] for m in meta if m["patient_id"] == patient}
        )
        assert len(batch) == 2 * pairs


def test_single_slice_cases_have_no_neighbour(acdc_data, kvasir_small, caplog):
    meta = [*acdc_data.train.meta, {"case_id": "lone", "patient_id": "lone", "slice_index": 0}]
    with caplog.at_level(logging.WARNING):
        sampler = AdjacentPairBatchSampler(meta, batch_size=8, seed=0)
    assert "1 single-slice case(s) have no neighbour" in caplog.text
    assert all(len(meta) - 1 not in b for b in sampler)
    kvasir = prepare_data(acdc_cfg(kvasir_small))
    with pytest.raises(DataError, match="no case has two or more slices"):
        AdjacentPairBatchSampler(kvasir.train.meta, batch_size=8, seed=0)


def test_contrastive_task_needs_pairs_and_checks_them(acdc_data):
    with pytest.raises(ConfigError, match="set train.sampler to one of pairs, patient-pairs"):
        load_config("small-unet-contrastive", [*TINY_SMALL, "train.sampler=shuffle"])  # at load
    cfg = load_config("small-unet-contrastive", TINY_SMALL)
    model, tasks = build_model_and_tasks(cfg, 1, 4)
    paired = next(iter(train_loader(acdc_data, 8, 0, 0, "patient-pairs")))
    partner = tasks[1].target(paired)
    assert partner.tolist()[:4] == [1, 0, 3, 2]
    loss = tasks[1].loss(model(paired["image"])["contrastive"], partner)
    assert torch.isfinite(loss) and loss > 0
    shuffled = next(iter(train_loader(acdc_data, 8, 0, 0, "shuffle")))
    with pytest.raises(TrainingError, match="not adjacent slices of one volume"):
        tasks[1].target(shuffled)


def test_info_nce_prefers_matching_partners():
    torch.manual_seed(0)
    anchors = torch.nn.functional.one_hot(torch.arange(4), 8).float()
    z = anchors.repeat_interleave(2, dim=0)  # partners identical, other pairs orthogonal
    partner = torch.arange(8) ^ 1
    good = info_nce(z, partner, 0.1)
    assert good < 1e-3 and info_nce(torch.randn(8, 8), partner, 0.1) > good
    # eq. 5 by hand for sample 0 with random embeddings
    r = torch.randn(6, 5)
    n = torch.nn.functional.normalize(r, dim=1)
    s = n @ n.T / 0.5
    by_hand = -(s[0, 1] - torch.logsumexp(torch.cat([s[0, 1:]]), 0))
    per_sample = torch.nn.functional.cross_entropy(
        s.masked_fill(torch.eye(6, dtype=torch.bool), float("-inf")),
        torch.arange(6) ^ 1,
        reduction="none",
    )
    assert per_sample[0].item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert info_nce(r, torch.arange(6) ^ 1, 0.5).item() == pytest.approx(
        per_sample.mean().item(), abs=1e-5
    )


def test_position_targets_match_the_slice_index(acdc_data):
    cfg = load_config("small-unet-position", TINY_SMALL)
    model, tasks = build_model_and_tasks(cfg, 1, 4)
    batch = next(iter(train_loader(acdc_data, 16, 0, 0)))
    target = tasks[1].target(batch)
    expected = batch["slice_index"].float() / (batch["num_slices"].float() - 1)
    assert torch.allclose(target, expected)
    out = model(batch["image"])["position"]
    assert out.shape == (16, 1) and torch.isfinite(tasks[1].loss(out, target))


def test_film_changes_the_output_only_when_its_metadata_changes(acdc_data):
    cfg = load_config("small-unet-film", TINY_SMALL)
    model, _ = build_model_and_tasks(cfg, 1, 4)
    model.eval()
    model.film.set_statistics(acdc_data.train.meta_values)
    batch = next(iter(train_loader(acdc_data, 4, 0, 0)))
    x, meta = batch["image"], batch["meta"].clone()
    with torch.no_grad():
        base = model.segment(x, meta)
        assert torch.equal(base, model.segment(x, meta.clone()))
        moved = meta.clone()
        moved[:, FIELDS.index("position")] += 0.3  # a field FiLM reads
        assert not torch.allclose(base, model.segment(x, moved))
        other = meta.clone()
        other[:, FIELDS.index("pixel_width")] = 2.5  # a field it does not read
        assert torch.equal(base, model.segment(x, other))
    with pytest.raises(ConfigError, match="conditioned on slice metadata"):
        model.segment(x)
    assert model.film.scale[-1].out_features == 4  # one scale per first-level channel


def test_film_leaves_out_the_case_identifier_and_warns_about_it(caplog):
    """Paper 001 lists the case number; in ACDC it encodes the diagnosis (blocks of 20)."""
    cfg = load_config("small-unet-film", TINY_SMALL)
    assert "patient_number" not in cfg.model.film.fields
    with caplog.at_level("WARNING"):
        build_model_and_tasks(cfg, 1, 4)
    assert "identifies the case" not in caplog.text
    fields = "model.film.fields=[position,patient_number]"
    with caplog.at_level("WARNING"):
        build_model_and_tasks(load_config("small-unet-film", [*TINY_SMALL, fields]), 1, 4)
    assert "'patient_number' identifies the case" in caplog.text


def _save_resnet_weights(path, width, in_channels=3):
    """A 'full' ResNet-50-like state dict as torchvision names it: four stages + fc."""
    full = ResNetEncoder(in_channels, [1, 1, 1, 1], width)
    state = {
        **full.state_dict(),
        "fc.weight": torch.randn(10, 32 * width),
        "fc.bias": torch.zeros(10),
    }
    torch.save(state, path)
    return state


def test_big_unet_loads_saved_weights_and_reports_keys(tmp_path):
    state = _save_resnet_weights(tmp_path / "r50.pth", width=4)
    params = {"layers": [1, 1, 1], "width": 4, "weights": str(tmp_path / "r50.pth")}
    net = build_backbone("big-unet", params, in_channels=1, num_classes=3)
    report = net.weights_report
    assert report["missing"] == []
    assert "fc.weight" in report["unexpected"] and any(
        k.startswith("layer4.") for k in report["unexpected"]
    )
    assert not any(k.startswith(("layer1.", "conv1")) for k in report["unexpected"])
    assert torch.equal(net.encoder.layer3[0].conv2.weight, state["layer3.0.conv2.weight"])
    assert net.encoder.conv1.weight.shape[1] == 3  # 1 channel replicated to the 3 it expects
    assert net(torch.randn(2, 1, 32, 32))[0].shape == (2, 3, 32, 32)
    assert net.feature_info["bottleneck"].channels == 4 * 16  # 1024 at ResNet-50's width 64

    del state["bn1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    partial = build_backbone("big-unet", {**params, "weights": str(tmp_path / "partial.pth")}, 1, 3)
    assert partial.weights_report["missing"] == ["bn1.weight"]
    _save_resnet_weights(tmp_path / "wide.pth", width=8)
    with pytest.raises(ConfigError, match="wide.pth: .* another shape"):
        build_backbone("big-unet", {**params, "weights": str(tmp_path / "wide.pth")}, 1, 3)
    with pytest.raises(ConfigError, match="missing.pth: weights file does not exist"):
        build_backbone("big-unet", {**params, "weights": str(tmp_path / "missing.pth")}, 1, 3)


def test_big_unet_freezes_the_stem():
    net = build_backbone("big-unet", {"layers": [1, 1, 1], "width": 4, "freeze": 4}, 1, 3)
    assert not net.encoder.conv1.weight.requires_grad and not net.encoder.bn1.weight.requires_grad
    assert net.encoder.layer1[0].conv1.weight.requires_grad
    net.train()
    assert not net.encoder.bn1.training and net.encoder.layer1.training


def test_multilabel_decoding():
    cfg = load_config("small-unet", TINY_SMALL)
    _, (seg,) = build_model_and_tasks(cfg, 1, 4)
    logits = torch.tensor([[-5.0, 2.0, 3.0], [-5.0, -4.0, -3.0]]).T.reshape(1, 3, 1, 2)
    assert seg.decode(logits).tolist() == [[[3, 0]]]  # the most probable on class; none: 0
    target = seg.target({"mask": torch.tensor([[[0, 3]]])})
    assert target.shape == (1, 3, 1, 2) and target[0, :, 0, 1].tolist() == [0.0, 0.0, 1.0]


def test_backbone_parameter_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.params: freeze must be 0..7, got 9"):
        build_backbone("big-unet", {"layers": [1, 1, 1], "width": 4, "freeze": 9}, 1, 3)
    with pytest.raises(ConfigError, match="model.params: small-unet needs at least two levels"):
        build_backbone("small-unet", {"channels": [4]}, 1, 3)


def test_class_max_equals_torch_max_with_ties_in_2d_and_3d():
    from mtlseg.tasks.segmentation import class_max

    torch.manual_seed(0)
    for shape in ((3, 4, 17, 9), (2, 2, 5, 6, 3), (1, 1, 4, 4)):
        scores = torch.randint(0, 3, shape).float()  # many ties
        best, index = class_max(scores)
        expected = scores.max(1)
        assert torch.equal(best, expected.values) and torch.equal(index, scores.argmax(1))
