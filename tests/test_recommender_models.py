import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recexplainer.config import SyntheticDataset
from recexplainer.data.loaders import make_synthetic
from recexplainer.data.preprocess import preprocess
from recexplainer.recommender import MF, SASRec, pad_left
from recexplainer.recommender.datamodule import training_windows


@pytest.fixture(params=[True, False], ids=["pre-ln", "post-ln"])
def sasrec(request):
    torch.manual_seed(0)
    return SASRec(
        n_items=30, hidden_size=16, n_layers=2, n_heads=2, inner_size=32, max_len=8, norm_first=request.param
    ).eval()


def test_shapes(sasrec):
    seq = torch.randint(1, 31, (4, 8))
    assert sasrec(seq).shape == (4, 8, 16)
    assert sasrec.user_vector(seq, torch.arange(4)).shape == (4, 16)
    assert sasrec.score(seq, torch.arange(4)).shape == (4, 31)
    assert sasrec(seq[:, -5:]).shape == (4, 5, 16)
    assert sasrec(torch.randint(1, 31, (2, 12))).shape == (2, 8, 16)  # longer input: last max_len items


def test_causality_later_items_never_change_earlier_outputs(sasrec):
    seq = torch.randint(1, 31, (3, 8))
    changed = seq.clone()
    changed[:, 5:] = torch.randint(1, 31, (3, 3))
    a, b = sasrec(seq), sasrec(changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_padding_is_ignored_and_never_produces_nan(sasrec):
    history = [3, 7, 9]
    short = pad_left([history])  # (1, 3)
    long = pad_left([history], None)
    long = torch.cat([torch.zeros(1, 5, dtype=torch.long), long], 1)  # (1, 8), 5 padding positions
    assert torch.allclose(sasrec.user_vector(short, None), sasrec.user_vector(long, None), atol=1e-5)
    out = sasrec(torch.zeros(2, 8, dtype=torch.long))
    assert torch.isfinite(out).all() and out.abs().sum() == 0
    # a padded item id in the middle of the padding region changes nothing
    assert torch.allclose(sasrec(long)[:, -3:], sasrec(short), atol=1e-5)


def test_score_excludes_padding_and_given_items(sasrec):
    seq = pad_left([[1, 2, 3], [4]])
    scores = sasrec.score(seq, None, exclude=pad_left([[1, 2, 3], [4]]))
    assert torch.isinf(scores[:, 0]).all()
    assert torch.isinf(scores[0, [1, 2, 3]]).all() and torch.isfinite(scores[0, 4:]).all()
    assert torch.isinf(scores[1, 4]) and torch.isfinite(scores[1, 1:4]).all()


def test_mf_user_vector_ignores_history():
    torch.manual_seed(0)
    mf = MF(n_items=20, n_users=5, hidden_size=8).eval()
    users = torch.tensor([0, 3])
    a = mf.user_vector(pad_left([[1, 2], [3]]), users)
    b = mf.user_vector(pad_left([[9], [4, 5, 6]]), users)
    assert torch.equal(a, b) and torch.equal(a, mf.user_emb.weight[users])
    assert mf(pad_left([[1, 2, 3]]), users[:1]).shape == (1, 3, 8)
    expected = a @ mf.item_emb.weight.T
    assert torch.allclose(mf.score(pad_left([[1], [2]]), users)[:, 1:], expected[:, 1:])


def test_pad_left():
    out = pad_left([[1, 2, 3], [4], []], max_len=2)
    assert out.tolist() == [[2, 3], [0, 4], [0, 0]]


@pytest.fixture
def data():
    cfg = OmegaConf.structured(SyntheticDataset(n_users=30, n_items=25, min_len=5, max_len=30, seed=2))
    return preprocess(make_synthetic(cfg), cfg, seed=0)[0]


@pytest.mark.parametrize("max_len,stride", [(6, 6), (6, 2), (50, 50)])
@pytest.mark.parametrize("first", [False, True])
def test_training_windows_cover_every_target_once_with_its_own_context(data, max_len, stride, first):
    users, inputs, targets = training_windows(data, max_len, stride, predicts_first_item=first)
    expected_count = sum(len(data.history(u, "train")) - (0 if first else 1) for u in range(data.n_users))
    assert int((targets != 0).sum()) == expected_count
    for w in range(len(users)):
        seq = data.history(int(users[w]), "train")
        for pos in torch.nonzero(targets[w]).flatten().tolist():
            # the input at a target's position is the item just before it in the user's sequence
            tgt, prev = int(targets[w, pos]), int(inputs[w, pos])
            idx = [k for k in range(len(seq)) if seq[k] == tgt]
            assert any((k == 0 and prev == 0) or (k > 0 and seq[k - 1] == prev) for k in idx)
    # in a full window (no padding) every owned target sees at least max_len - stride + 1 inputs
    full = inputs[:, 0] != 0
    context = (inputs != 0).cumsum(1)
    owned = targets != 0
    if full.any():
        assert context[full][owned[full]].min() >= max_len - stride + 1


def test_training_windows_reject_bad_stride(data):
    with pytest.raises(ValueError, match="stride"):
        training_windows(data, 5, 6, False)


def test_sasrec_learns_the_synthetic_structure(data):
    """A few hundred steps on genre-sticky sequences: next-item loss must drop well below uniform."""
    torch.manual_seed(0)
    model = SASRec(
        n_items=data.n_items,
        hidden_size=32,
        n_layers=1,
        n_heads=1,
        inner_size=64,
        max_len=10,
        dropout=0.0,
        attn_dropout=0.0,
    )
    from recexplainer.recommender.module import RecommenderModule

    module = RecommenderModule(model, lr=5e-3)
    users, inputs, targets = training_windows(data, 10, 10, False)
    opt = module.configure_optimizers()
    for _ in range(150):
        loss = module.loss(users, inputs, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * math.log(data.n_items)
    assert np.isfinite(loss.item())


def test_plateau_schedule_is_optional():
    from recexplainer.recommender.module import RecommenderModule

    model = SASRec(n_items=10, hidden_size=8, n_layers=1, n_heads=1, inner_size=16, max_len=4)
    assert isinstance(RecommenderModule(model).configure_optimizers(), torch.optim.Adam)
    out = RecommenderModule(model, plateau_factor=0.5, plateau_patience=2).configure_optimizers()
    scheduler = out["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert out["lr_scheduler"]["monitor"] == "valid/ndcg@10" and scheduler.factor == 0.5


def test_cpu_dropout_rate_scale_gradient_and_eval_identity():
    from recexplainer.recommender.sasrec import Dropout

    torch.manual_seed(0)
    x = torch.ones(400, 500, requires_grad=True)
    drop = Dropout(0.35).train()
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.35) < 0.01
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.65), atol=1e-3)  # kept values scaled by 1/(1-p)
    assert abs(y.mean().item() - 1.0) < 0.02  # unbiased
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # the gradient flows through the kept entries only
    assert not torch.equal(drop(x), drop(x))  # a fresh mask per call
    drop.eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)


def test_keep_freed_memory_restores_and_computes_the_same():
    from recexplainer.runtime import keep_freed_memory

    a = torch.randn(300, 400)
    expected = (a @ a.T).sum()
    with keep_freed_memory():
        inside = (a @ a.T).sum()
        big = torch.empty(5_000_000)  # 20 MB: a block glibc would otherwise mmap
        del big
    assert torch.equal(inside, expected)
    assert torch.equal((a @ a.T).sum(), expected)
