"""--sparse-embeddings: sparse table gradients with a lazy Adam (SparseAdam)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lightfmp import pipeline
from lightfmp.config import RunConfig
from lightfmp.dataset import load_dataset
from lightfmp.models import ModelConfig, build_model
from lightfmp.rows import ArrayRows
from lightfmp.training import TrainConfig, fit

from helpers import write_csv


def _data(tmp_path):
    cfg = RunConfig.of(data=str(write_csv(tmp_path, n=4000)), label="label", multi_hot="tags:|", seed=0)
    return cfg, load_dataset(cfg.data)


@pytest.mark.parametrize("backbone", ["deepfm", "dcnv2"])
def test_one_step_updates_only_the_rows_the_batch_read(tmp_path, backbone):
    _, data = _data(tmp_path)
    torch.manual_seed(0)
    model = build_model(backbone, data.schema, ModelConfig(embed_dim=4, hidden=[8]), gated=False)
    ids, y = data.split_rows("train").take(np.arange(16)).arrays()
    before = [p.detach().clone() for p in model.embedding.table_parameters()]
    fit(model, ArrayRows(ids, y), None, TrainConfig(epochs=1, batch_size=16, sparse_embeddings=True))
    rows = torch.unique(torch.from_numpy(ids.astype(np.int64)) + model.embedding.slot_offsets)
    untouched = torch.ones(len(before[0]), dtype=torch.bool)
    untouched[rows] = False
    for b, p in zip(before, model.embedding.table_parameters()):
        assert torch.equal(b[untouched], p.detach()[untouched])       # lazy: never read, never moved
        assert not torch.equal(b[rows], p.detach()[rows])              # read rows took the step
    assert model.embedding.weight.grad is None or model.embedding.weight.grad.is_sparse


@pytest.fixture(scope="module")
def dense_and_sparse(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sparse")
    cfg, _ = _data(tmp)
    base = dict(embed_dim=8, hidden="32", pretrain_epochs=5, epochs=3, batch_size=128, subset=0.5, keep=3)
    dense = pipeline.run(cfg.but(**base), tmp / "dense", quiet=True)
    sparse = pipeline.run(cfg.but(**base, sparse_embeddings=True), tmp / "sparse", quiet=True)
    return dense, sparse


def test_sparse_run_learns_and_prunes_like_dense(dense_and_sparse):
    dense, sparse = dense_and_sparse
    assert set(sparse["fields"]["kept"]) == set(dense["fields"]["kept"])
    assert sparse["test"]["auc"] > 0.75 and abs(sparse["test"]["auc"] - dense["test"]["auc"]) < 0.03


def test_keep_k_finds_the_planted_fields(dense_and_sparse):
    # a, b and x carry the planted signal; noise and tags do not. (The ranking by log_alpha, before the forward
    # order, kept the 30-value noise field instead of b here: every gate ends saturated at 1.)
    for m in dense_and_sparse:
        assert set(m["fields"]["kept"]) == {"a", "b", "x"}


def test_weight_decay_cannot_be_combined_with_sparse_tables(tmp_path):
    # weight decay is no training knob, so no config asks SparseAdam (which has none) for it
    assert "weight_decay" not in {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(TypeError, match="weight_decay"):
        TrainConfig(sparse_embeddings=True, weight_decay=1e-4)
    _, data = _data(tmp_path)
    model = build_model("mlp", data.schema, ModelConfig(embed_dim=4, hidden=[8]))
    fit(model, data.split_rows("train"), None, TrainConfig(epochs=1, batch_size=256, sparse_embeddings=True))
    assert model.embedding.weight.grad is None or model.embedding.weight.grad.is_sparse
