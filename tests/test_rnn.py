"""helpers.rnn: the hand-written RNN forward and BPTT against autograd and nn.RNN (float64)."""

import pytest
import torch
from torch.testing import assert_close

from helpers import rnn
from helpers.vocab import EncodedReviews

T, B, D, H, O = 5, 3, 3, 4, 2


def _params(bias=True):
    g = torch.Generator().manual_seed(0)
    def p(*shape):
        return (0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()
    return dict(W_hx=p(H, D), W_hh=p(H, H), b_h=p(H) if bias else None, W_yh=p(O, H),
                b_y=p(O) if bias else None)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "identity"])
@pytest.mark.parametrize("bias", [True, False])
def test_bptt_matches_autograd(activation, bias):
    params = _params(bias)
    x = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(T, B, O, dtype=torch.float64), -1)
    h, o, cache = rnn.rnn_forward(x, h0, **params, activation=activation)
    extra = torch.randn(T, B, H, dtype=torch.float64)  # a loss term on h directly
    loss, grad_o = rnn.softmax_cross_entropy(o, y)
    (loss + (extra * h).sum()).backward()
    grads = rnn.rnn_bptt(cache, params["W_hx"], params["W_hh"], params["W_yh"], grad_o.detach(),
                         grad_h=extra)
    for name, p in params.items():
        if p is not None:
            assert_close(grads[name], p.grad)
    assert_close(grads["h0"], h0.grad)
    assert_close(grads["x"], x.grad)
    assert_close(grads["W_hh_per_step"].sum(0), params["W_hh"].grad)


def test_softmax_cross_entropy_gradient_is_yhat_minus_y():
    o = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1]), 3).double()
    loss, grad = rnn.softmax_cross_entropy(o, y)
    loss.backward()
    assert_close(grad, o.grad)
    assert_close(grad, torch.softmax(o, -1).detach() - y)


def test_hidden_jacobian_matches_autograd():
    params = _params()
    x = torch.randn(T, 1, D, dtype=torch.float64)
    h0 = torch.randn(1, H, dtype=torch.float64)
    _, _, cache = rnn.rnn_forward(x, h0, params["W_hx"], params["W_hh"], params["b_h"])
    i, t = 1, 4

    def h_t_from_h_i(h_i):
        h = h_i
        for k in range(i, t):
            h = torch.tanh(h @ params["W_hh"].T + x[k] @ params["W_hx"].T + params["b_h"])
        return h[0]

    ref = torch.autograd.functional.jacobian(h_t_from_h_i, cache.h[i].detach())[:, 0]
    assert_close(rnn.hidden_jacobian(cache, params["W_hh"].detach(), t, i)[0], ref)
    eye = torch.eye(H, dtype=torch.float64)
    assert_close(rnn.hidden_jacobian(cache, params["W_hh"], 2, 2)[0], eye)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_vanilla_rnn_matches_nn_rnn(activation):
    layer = rnn.VanillaRNN(D, H, O, activation=activation)
    with torch.no_grad():
        layer.b_h.normal_()
    ref = layer.torch_rnn_like()
    x, h0 = torch.randn(T, B, D), torch.randn(B, H)
    h, o = layer(x, h0)
    ref_h, ref_last = ref(x, h0.unsqueeze(0))
    assert_close(h, ref_h, atol=1e-6, rtol=1e-5)
    assert_close(h[-1], ref_last[0], atol=1e-6, rtol=1e-5)
    assert o.shape == (T, B, O)


def test_errors():
    with pytest.raises(ValueError, match="activation"):
        rnn.rnn_forward(torch.zeros(2, 1, 3), None, torch.zeros(4, 3), torch.zeros(4, 4),
                        activation="gelu")
    with pytest.raises(ValueError, match=r"\(T, B, D\)"):
        rnn.rnn_forward(torch.zeros(2, 3), None, torch.zeros(4, 3), torch.zeros(4, 4))


# ---- sequence classification (Question 4) ----

def test_bptt_function_matches_autograd():
    layer = rnn.BPTTRNN(3, 4).double()
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 2, 4, dtype=torch.float64)
    (layer(x)[0] * weight).sum().backward()
    hand = [p.grad.clone() for p in (layer.W_hx, layer.W_hh, layer.b_h)] + [x.grad.clone()]
    x2 = x.detach().clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in (layer.W_hx, layer.W_hh, layer.b_h)]
    h, _, _ = rnn.rnn_forward(x2, None, *params)
    (h * weight).sum().backward()
    for a, b in zip(hand, [p.grad for p in params] + [x2.grad], strict=True):
        assert_close(a, b)
    assert_close(layer(x)[0], layer.torch_rnn_like()(x)[0])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_unroll_matches_module(cell):
    module = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](
        3, 5, batch_first=True).double()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    assert_close(torch.stack(rnn.unroll(module, x), 1), module(x)[0])


@pytest.mark.parametrize("cell", ["scratch", "rnn", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_classifier_ignores_padding(cell, bidirectional):
    if cell == "scratch" and bidirectional:
        pytest.skip("scratch is unidirectional")
    for pooling in rnn.POOLINGS:
        model = rnn.RecurrentClassifier(20, 4, 6, cell, bidirectional, pooling).double().eval()
        ids = torch.randint(1, 20, (3, 5))
        lengths = torch.tensor([5, 3, 1])
        ids[1, 3:] = 0
        ids[2, 1:] = 0
        padded = model(torch.cat([ids, torch.zeros(3, 4, dtype=torch.long)], 1), lengths)
        alone = torch.cat([model(ids[i:i + 1, :lengths[i]], lengths[i:i + 1]) for i in range(3)])
        assert_close(padded, alone)
        assert padded.shape == (3, 2)


def test_hard_attention_has_no_gradient_to_scores_but_straight_through_does():
    ids = torch.randint(1, 20, (4, 6))
    lengths = torch.full((4,), 6)
    labels = torch.tensor([0, 1, 0, 1])
    norms = {}
    for pooling in ("hard", "hard_st", "attention"):
        torch.manual_seed(0)
        model = rnn.RecurrentClassifier(20, 4, 6, "gru", pooling=pooling)
        torch.nn.functional.cross_entropy(model(ids, lengths), labels).backward()
        grad = model.attn_proj.weight.grad
        norms[pooling] = 0.0 if grad is None else float(grad.norm())
        w = model.last_weights
        assert_close(w.sum(1), torch.ones(4))
    assert norms["hard"] == 0.0
    assert norms["hard_st"] > 0 and norms["attention"] > 0


@pytest.mark.parametrize("cell", ["scratch", "rnn", "lstm"])
def test_hidden_gradient_norms_match_autograd(cell):
    model = rnn.RecurrentClassifier(20, 4, 6, cell).double()
    ids = torch.randint(1, 20, (3, 7))
    labels = torch.tensor([0, 1, 1])
    norms = rnn.hidden_gradient_norms(model, ids, labels)
    assert norms.shape == (7,)
    # the last step's gradient is the head's: W_out^T (softmax - y) / B
    logits = model(ids, torch.full((3,), 7))
    g = (logits.softmax(-1) - torch.nn.functional.one_hot(labels, 2)) @ model.head.weight / 3
    assert_close(norms[-1], g.norm(dim=-1).mean().detach())
    if cell == "scratch":  # every step vs autograd through the same RNN unrolled
        ref = torch.nn.RNN(4, 6, batch_first=True).double()
        with torch.no_grad():
            ref.weight_ih_l0.copy_(model.rnn.W_hx)
            ref.weight_hh_l0.copy_(model.rnn.W_hh)
            ref.bias_ih_l0.copy_(model.rnn.b_h)
            ref.bias_hh_l0.zero_()
        states = rnn.unroll(ref, model.embedding(ids).detach())
        loss = torch.nn.functional.cross_entropy(model.head(states[-1]), labels)
        grads = torch.autograd.grad(loss, states)
        assert_close(norms, torch.stack([g.norm(dim=-1).mean() for g in grads]))


def test_grad_norm_tracker_reads_before_clipping():
    model = torch.nn.Linear(3, 1)
    tracker = rnn.GradNormTracker(model)
    tracker.new_step()
    model(torch.ones(2, 3)).sum().backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    assert tracker.norms[0] == pytest.approx(float(expected))
    tracker.remove()


def _reviews(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (len(labels), 6), generator=g)
    return EncodedReviews(ids, torch.randint(2, 7, (len(labels),), generator=g),
                          torch.as_tensor(labels))


def test_score_classifier_counts_correct_reviews():
    torch.manual_seed(0)
    model = rnn.RecurrentClassifier(20, 4, 6, "gru")
    data = _reviews([0, 1] * 10)
    scores = rnn.score_classifier(model, data, batch_size=7)
    logits = model(data.ids, data.lengths)
    assert_close(scores["correct"], (logits.argmax(-1) == data.labels).float())
    assert scores["accuracy"] == pytest.approx(float(scores["correct"].mean()))
    ref = torch.nn.functional.cross_entropy(logits, data.labels)
    assert scores["loss"] == pytest.approx(float(ref.detach()), rel=1e-5)


def test_fit_classifier_stops_early_and_restores_the_best_epoch():
    # the validation reviews are the training reviews with flipped labels: every epoch of
    # training raises the validation loss, so epoch 1 is best and patience 1 stops at epoch 2
    train = _reviews([0, 1, 1, 0] * 8)
    val = EncodedReviews(train.ids, train.lengths, 1 - train.labels)
    torch.manual_seed(0)
    model = rnn.RecurrentClassifier(20, 4, 6, "gru")
    optimizer = torch.optim.Adam(model.parameters(), 0.05)
    history = rnn.fit_classifier(model, train, val, optimizer, 5, 8,
                                 torch.Generator().manual_seed(0), patience=1)
    val_losses = history.column("val_loss")
    assert len(val_losses) == 2 and val_losses[1] > val_losses[0]
    assert rnn.score_classifier(model, val)["loss"] == pytest.approx(val_losses[0], rel=1e-5)
    assert set(history.rows[0]) >= {"train_loss", "val_loss", "val_accuracy"}


def test_fit_classifier_can_stop_on_validation_accuracy():
    # patience 1 stops at the first epoch without a higher accuracy, so the restored model
    # has the highest validation accuracy of the run
    train, val = _reviews([0, 1, 1, 0] * 8), _reviews([1, 0, 0, 1] * 4, seed=1)
    torch.manual_seed(0)
    model = rnn.RecurrentClassifier(20, 4, 6, "gru")
    history = rnn.fit_classifier(model, train, val, torch.optim.Adam(model.parameters(), 0.05),
                                 6, 8, torch.Generator().manual_seed(0), patience=1,
                                 monitor="val_accuracy")
    accuracies = history.column("val_accuracy")
    assert rnn.score_classifier(model, val)["accuracy"] == pytest.approx(max(accuracies))
    assert accuracies.index(max(accuracies)) in (len(accuracies) - 2, len(accuracies) - 1)
    with pytest.raises(ValueError, match="monitor"):
        rnn.fit_classifier(model, train, val, torch.optim.Adam(model.parameters()), 1, 8,
                           torch.Generator().manual_seed(0), monitor="f1")


def test_fit_classifier_steps_the_scheduler_per_batch():
    train = _reviews([0, 1] * 8)  # 16 reviews: 2 batches of 8 per epoch
    model = rnn.RecurrentClassifier(20, 4, 6, "gru")
    optimizer = torch.optim.Adam(model.parameters(), 0.01)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.5)
    rnn.fit_classifier(model, train, None, optimizer, 3, 8, torch.Generator().manual_seed(0),
                       patience=None, scheduler=scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 6)


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = rnn.RecurrentClassifier(20, 4, 6, "gru", pooling="mean", dropout=0.5)
    data = _reviews([0, 1] * 4)
    model.eval()
    torch.testing.assert_close(model(data.ids, data.lengths), model(data.ids, data.lengths))
    model.train()
    assert not torch.allclose(model(data.ids, data.lengths), model(data.ids, data.lengths))
    plain = rnn.RecurrentClassifier(20, 4, 6, "gru", pooling="mean")
    plain.load_state_dict(model.state_dict())  # dropout adds no parameters
    plain.eval(), model.eval()
    torch.testing.assert_close(plain(data.ids, data.lengths), model(data.ids, data.lengths))


def test_fit_classifier_without_patience_trains_every_epoch_and_tracks_steps():
    train = _reviews([0, 1] * 8)
    model = rnn.RecurrentClassifier(20, 4, 6, "rnn")
    tracker = rnn.GradNormTracker(model)
    history = rnn.fit_classifier(model, train, None, torch.optim.SGD(model.parameters(), 0.1),
                                 3, 4, torch.Generator().manual_seed(0), patience=None,
                                 loss_fn=tracker.tracked(rnn.classification_loss))
    tracker.remove()
    assert len(history.rows) == 3
    assert len(tracker.norms) == len(history.step_losses) == 3 * 4
    assert all(n > 0 for n in tracker.norms)
    with pytest.raises(ValueError, match="validation"):
        rnn.fit_classifier(model, train, None, torch.optim.SGD(model.parameters(), 0.1), 1, 4,
                           torch.Generator().manual_seed(0))
