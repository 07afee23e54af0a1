import math

import torch
import torch.nn.functional as F

from bitdet.engine import sigmoid_cross_entropy, softmax_cross_entropy


def test_softmax_hard_and_one_hot_soft_targets_agree():
    logits = torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    hard = softmax_cross_entropy(logits, y)
    soft = softmax_cross_entropy(logits, F.one_hot(y, 5).float())
    manual = -(logits.log_softmax(1)[torch.arange(6), y]).mean()
    torch.testing.assert_close(hard, manual)
    torch.testing.assert_close(soft, manual)


def test_sigmoid_sums_over_classes_and_means_over_batch():
    logits = torch.randn(4, 3)
    y = torch.tensor([[1.0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 1, 1]])
    p = logits.sigmoid()
    manual = -(y * p.log() + (1 - y) * (1 - p).log()).sum(1).mean()
    torch.testing.assert_close(sigmoid_cross_entropy(logits, y), manual)
    torch.testing.assert_close(
        sigmoid_cross_entropy(logits, y.argmax(1)),
        sigmoid_cross_entropy(logits, F.one_hot(y.argmax(1), 3).float()),
    )


def test_head_bias_minus_10_gives_small_initial_multilabel_loss():
    # 21843 classes, ~1.3 positives each: bias -10 => loss ~ 1.3 * 10 + 21843 * e^-10 ~ 14
    logits = torch.full((2, 21843), -10.0)
    y = torch.zeros(2, 21843)
    y[0, 5] = y[1, 7] = 1
    loss = sigmoid_cross_entropy(logits, y).item()
    assert math.isclose(loss, 10 + 21843 * math.log1p(math.exp(-10)), rel_tol=1e-3)
    assert sigmoid_cross_entropy(torch.zeros(2, 21843), y).item() > 1000  # bias 0: huge


def test_bf16_logits_give_float32_loss():
    logits = torch.randn(3, 4).bfloat16()
    assert softmax_cross_entropy(logits, torch.tensor([0, 1, 2])).dtype == torch.float32
