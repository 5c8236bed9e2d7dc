"""engine/rows.py: labelled and pool rows selected and merged back, every output batch-first."""

from __future__ import annotations

import pytest
import torch

from mtlseg.engine.module import MultiTaskModule
from mtlseg.engine.rows import PoolForward, merge_rows, select_rows
from mtlseg.models.registry import TINY_PARAMS
from mtlseg.settings import load_config


def test_merge_puts_rows_back_where_select_took_them():
    rows = torch.tensor([True, False, False, True, True, False, True, False, True, False])
    value = {"a": torch.arange(10 * 5 * 3.0).view(10, 5, 3), "ids": [f"c{i}" for i in range(10)]}
    order = torch.cat([rows.nonzero()[:, 0], (~rows).nonzero()[:, 0]])
    merged = merge_rows(select_rows(value, rows), select_rows(value, ~rows), torch.argsort(order))
    assert torch.equal(merged["a"], value["a"]) and merged["ids"] == value["ids"]


def test_an_output_that_is_not_batch_first_is_an_error_not_a_guess():
    inverse = torch.arange(6)
    with pytest.raises(ValueError, match="not batch-first"):
        merge_rows(torch.zeros(5, 2, 4), torch.zeros(5, 4, 4), inverse)


def test_five_hog_stages_with_five_labelled_and_five_pool_rows_merge_on_the_batch_axis():
    """U2Net-HOG stacks one prediction per decoder stage: 5 stages, and 5 rows in each group,
    the shape a guessed batch axis confused with the stage axis."""
    tiny = str(TINY_PARAMS["u2net"]).replace("'", '"')
    cfg = load_config("u2net-hog", [f"model.params={tiny}", "data.image_size=32"])
    module = MultiTaskModule(cfg.to_dict(), 1, ["bg", "a", "b"]).eval()
    torch.manual_seed(0)
    x = torch.randn(10, 1, 32, 32)
    rows = torch.tensor([True, False] * 5)
    outputs, _ = PoolForward("separate")(module.model, x, {"labelled": rows})
    labelled, _ = module.model.forward_with_features(x[rows])
    pool, _ = module.model.forward_with_features(x[~rows])
    assert outputs["hog"].shape == (10, 5, outputs["hog"].shape[-1])
    assert torch.allclose(outputs["hog"][rows], labelled["hog"], atol=1e-6)
    assert torch.allclose(outputs["hog"][~rows], pool["hog"], atol=1e-6)
