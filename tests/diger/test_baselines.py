"""SASRecBCE: SASRec with its paper's binary cross-entropy loss (Kang & McAuley 2018, Sec. III-E)."""
import pytest
import torch
import torch.nn.functional as F

from diger.testing import small_config

SMALL = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "train_batch_size": 32}


def _build(root, **extra):
    from recbole.data import create_dataset, data_preparation

    from diger.quick_start import make_config
    from diger.models import SASRecBCE

    config = make_config("SASRecBCE", "toy", config_dict=small_config(root, **SMALL, **extra))
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    return config, SASRecBCE(config, train.dataset), train


def test_defaults_come_from_recbole_sasrec_then_ours(toy_root):
    config, model, _ = _build(toy_root)
    assert config["loss_type"] == "BCE" and model.loss_type == "BCE"
    assert config["train_neg_sample_args"]["sample_num"] == 1
    assert config["hidden_act"] == "gelu" and config["initializer_range"] == 0.02  # RecBole's SASRec.yaml


def test_loss_is_bce_on_positive_and_sampled_negative(toy_root):
    torch.manual_seed(0)
    _, model, train = _build(toy_root)
    batch = next(iter(train))
    assert model.NEG_ITEM_ID in batch  # RecBole sampled a negative per prefix
    model.eval()  # no dropout: the two computations see the same network
    s = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    pos = (s * model.item_embedding(batch[model.POS_ITEM_ID])).sum(-1)
    neg = (s * model.item_embedding(batch[model.NEG_ITEM_ID])).sum(-1)
    manual = -(torch.log(torch.sigmoid(pos)).mean() + torch.log(1 - torch.sigmoid(neg)).mean())
    loss = model.calculate_loss(batch)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    # and it differs from RecBole's BPR on the same scores
    assert loss.item() != pytest.approx(-F.logsigmoid(pos - neg).mean().item(), rel=1e-3)
    loss.backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("extra, match", [({"loss_type": "CE", "train_neg_sample_args": None}, "loss_type"),
                                          ({"train_neg_sample_args": None}, "train_neg_sample_args")])
def test_bad_config_names_the_key(toy_root, extra, match):
    with pytest.raises(ValueError, match=match):
        _build(toy_root, **extra)


def test_run_learns_the_ring(toy_root):
    """The toy users step +1 or +2 around a ring of 24 items: a trained SASRecBCE beats chance by far."""
    from diger.quick_start import run

    cfg = small_config(toy_root, **SMALL, epochs=30, learning_rate=0.01, output_dir=str(toy_root / "out"))
    r = run("SASRecBCE", "toy", config_dict=cfg)
    assert r["config"]["model"] == "SASRecBCE"
    # chance Recall@10 over 24 items is 10/24 = 0.42
    assert r["test_result"]["recall@10"] >= 0.7
