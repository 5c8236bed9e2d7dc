"""`mtlseg export` (ONNX, torch.export) and `mtlseg predict --model` against `mtlseg predict`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from mtlseg.cli import main
from mtlseg.data.dataset import model_input
from mtlseg.engine.inference import load_module, predict
from mtlseg.engine.spatial import Slices, Volumes
from mtlseg.engine.train import train
from mtlseg.errors import MtlsegError
from mtlseg.export import export
from mtlseg.export.formats import _exportable
from mtlseg.export.runtime import predict_onnx
from mtlseg.settings import load_config
from tests.conftest import TINY_UNET, make_kvasir_subset


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny UNet trained a few steps on 8 Kvasir-SEG images, its ONNX file, and test
    images at sizes other than the training data's (a crop, a stretched copy)."""
    root = tmp_path_factory.mktemp("export")
    data = make_kvasir_subset(root / "data", n=8)
    cfg = load_config(
        "unet", [*TINY_UNET, f"data.path={data}", "train.max_steps=40", "train.val_every=40"]
    )
    ckpt = train(cfg, root / "run").best_checkpoint
    images = root / "images"
    images.mkdir()
    for i, path in enumerate(sorted((data / "images").iterdir())[:4]):
        im = Image.open(path)
        im.save(images / path.name)
        if i == 0:
            im.crop((10, 20, 210, 250)).save(images / f"crop-{path.stem}.png")
        if i == 1:
            im.resize((301, 187)).save(images / f"wide-{path.stem}.png")
    onnx_file = root / "model.onnx"
    meta = export(ckpt, "onnx", onnx_file)
    return SimpleNamespace(ckpt=ckpt, images=images, onnx=onnx_file, meta=meta, root=root)


def masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.iterdir())}


def test_onnx_masks_equal_mtlseg_predict_on_real_images(exported, tmp_path):
    predict(exported.ckpt, exported.images, tmp_path / "torch", num_workers=0)
    predict_onnx(exported.onnx, exported.images, tmp_path / "onnx")
    ours, theirs = masks(tmp_path / "torch"), masks(tmp_path / "onnx")
    assert sorted(ours) == sorted(theirs) and len(ours) == 6
    assert {m.shape for m in ours.values()} == {(256, 256), (230, 200), (187, 301)}
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name  # every pixel
    assert any(m.any() for m in ours.values())  # not trivially all background


def test_onnx_network_logits_and_metadata(exported):
    module = load_module(exported.ckpt)
    session = ort.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    files = sorted(exported.images.glob("*.jpg"))[:2]
    raw = np.stack([np.asarray(Image.open(f)).astype(np.float32) for f in files])  # (2, H, W, 3)
    labels, logits = session.run(None, {"image": raw.transpose(0, 3, 1, 2)})  # batch of 2
    x = torch.cat([model_input(r[None], "zscore", 32) for r in raw])
    with torch.no_grad():
        reference = module.model.segment(x).numpy()
    assert logits.shape == reference.shape == (2, 2, 32, 32)
    assert np.abs(logits - reference).max() < 1e-4  # the network alone: float rounding only
    single = session.run(["labels"], {"image": raw[:1].transpose(0, 3, 1, 2)})[0]
    assert np.array_equal(single[0], labels[0])  # the batch is dynamic, items independent
    props = {p.key: p.value for p in onnx.load(str(exported.onnx)).metadata_props}
    meta = json.loads(props["mtlseg"])
    assert meta["classes"] == list(module.class_names) and meta["input_size"] == 32
    assert meta["normalization"] == "zscore" and meta["normalization_in_graph"] is True
    from mtlseg import __version__

    assert meta["mtlseg_version"] == __version__


def test_torch_export_program_gives_the_same_masks(exported, tmp_path):
    out = tmp_path / "model.pt2"
    export(exported.ckpt, "torch-export", out)
    extra = {"mtlseg.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    assert json.loads(extra["mtlseg.json"])["format"] == "torch-export"
    predict(exported.ckpt, exported.images, tmp_path / "torch", num_workers=0)
    for path in sorted(exported.images.iterdir()):
        raw = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
        image = torch.from_numpy(raw).permute(2, 0, 1)[None]
        labels, _ = program.module()(image)
        expected = np.asarray(Image.open(tmp_path / "torch" / f"{path.stem}.png")) > 0
        assert np.array_equal(labels[0].numpy() > 0, expected), path.name


def test_normalisation_outside_the_graph(exported, tmp_path):
    """The volume form: the file takes normalised images; predict --model normalises first."""
    out = tmp_path / "outside.onnx"
    meta = export(exported.ckpt, "onnx", out, normalization="outside")
    assert meta["normalization_in_graph"] is False
    predict_onnx(out, exported.images, tmp_path / "outside")
    predict(exported.ckpt, exported.images, tmp_path / "torch", num_workers=0)
    ours, theirs = masks(tmp_path / "torch"), masks(tmp_path / "outside")
    for name in ours:  # the order of normalise and resize differs: float rounding only
        assert (ours[name] == theirs[name]).mean() > 0.999, name


def test_cli_export_and_predict_with_the_model(exported, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert (
        main(["export", "--ckpt", str(exported.ckpt), "--format", "onnx", "--out", str(out)]) == 0
    )
    said = capsys.readouterr()
    assert "in the graph: per-image normalisation" in said.out
    assert said.out.count("\n") == 1 and said.err == "", "quiet unless --verbose"
    args = ["predict", "--input", str(exported.images), "--out"]
    assert main([*args, str(tmp_path / "a"), "--model", str(out)]) == 0
    assert main([*args, str(tmp_path / "b"), "--ckpt", str(exported.ckpt), "--workers", "0"]) == 0
    a, b = masks(tmp_path / "a"), masks(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in b)
    with pytest.raises(SystemExit):  # one source of the model, not two
        main([*args, str(tmp_path / "c"), "--model", str(out), "--ckpt", str(exported.ckpt)])
    assert main([*args, str(tmp_path / "c"), "--model", str(out), "--tta"]) == 2
    assert "--tta is not in an exported graph" in capsys.readouterr().err


def test_what_cannot_be_exported_is_refused_with_a_reason(exported, tmp_path, capsys):
    with pytest.raises(MtlsegError, match="sliding window"):
        _exportable(SimpleNamespace(spatial=Volumes(), model=SimpleNamespace(film=None)))
    with pytest.raises(MtlsegError, match="FiLM"):
        _exportable(SimpleNamespace(spatial=Slices(), model=SimpleNamespace(film=object())))
    assert main(["export", "--ckpt", str(exported.ckpt), "--format", "tflite", "--out", "x"]) == 2
    assert "unknown export format 'tflite'; valid export formats: onnx, torch-export" in (
        capsys.readouterr().err
    )
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.rand(1, 3, 8, 8),), str(plain), dynamo=True)
    with pytest.raises(MtlsegError, match="not exported by mtlseg"):
        predict_onnx(plain, exported.images, tmp_path / "p")
    volume = tmp_path / "vol"
    volume.mkdir()
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.float32), np.eye(4)), volume / "v.nii.gz")
    with pytest.raises(MtlsegError, match="--normalization outside"):
        predict_onnx(exported.onnx, volume, tmp_path / "p")


def test_onnx_inference_does_not_import_lightning():
    import subprocess
    import sys

    code = (
        "import sys; from mtlseg.export.runtime import predict_onnx; "
        "print(any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_exporting_without_onnx_is_one_line_naming_the_extra(monkeypatch):
    import sys
    from pathlib import Path

    from mtlseg.errors import MtlsegError
    from mtlseg.export.formats import write_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if it were not installed
    with pytest.raises(
        MtlsegError, match=r"needs onnx and onnxscript: pip install 'mtlseg\[export\]'"
    ):
        write_onnx(None, (), Path("unused.onnx"), {})  # type: ignore[arg-type]
