import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from bitdet.engine import classification_metrics, evaluate_classifier, multilabel_metrics


def test_classification_metrics_by_hand():
    # 6 classes; sample 0 right, 1 wrong but in top 5, 2 wrong, 3 right
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],
            [9.0, 1, 2, 3, 4, 0],  # true 1: top-1 wrong, top-5 right
            [0.0, 1, 2, 3, 4, 9],  # true 0: rank 6 -> both wrong
            [0.0, 0, 9, 0, 0, 0],
        ]
    )
    targets = torch.tensor([0, 1, 0, 2])
    m = classification_metrics(logits, targets)
    assert m["top1"] == 50.0 and m["top5"] == 75.0 and m["num_samples"] == 4
    assert m["confusion"][0] == [1, 0, 0, 0, 0, 1] and m["confusion"][1][0] == 1
    assert m["per_class_acc"][:3] == [50.0, 0.0, 100.0] and math.isnan(m["per_class_acc"][3])
    assert m["mean_per_class_acc"] == 50.0


def test_multilabel_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 6))
    y = (rng.random((40, 6)) < 0.3).astype(np.float32)
    y[:, 5] = 0  # a class without positives is left out of the mean
    m = multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(y))
    expected = np.mean([average_precision_score(y[:, c], scores[:, c]) for c in range(5)]) * 100
    assert m["mAP"] == pytest.approx(expected, rel=1e-9)
    assert m["precision@1"] == pytest.approx(100 * y[np.arange(40), scores.argmax(1)].mean())


class Fixed(torch.utils.data.Dataset):
    def __init__(self, n=10):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == 3:
            return None  # an unusable image
        x = torch.zeros(4)
        x[i % 4] = 1.0
        return x, i % 4


def test_evaluate_classifier_end_to_end_restores_mode():
    model = torch.nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.copy_(torch.eye(4))
        model.bias.zero_()
    model.train()
    m = evaluate_classifier(model, Fixed(), batch_size=3)
    assert m["top1"] == 100.0 and m["skipped"] == 1 and m["num_samples"] == 9
    assert model.training


def test_channels_last_and_cached_ws_evaluation_match_plain():
    from bitdet import create_model
    from bitdet.models.fast import std_convs

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)), i % 3

    torch.manual_seed(0)
    model = create_model("R14-tiny", num_classes=3)
    torch.nn.init.normal_(model.fc.weight, std=0.1)
    from bitdet.engine import predict

    plain = predict(model, Images(), batch_size=2, cache_ws=False)["logits"]
    model.to(memory_format=torch.channels_last)
    fast = predict(model, Images(), batch_size=2, cache_ws=True)["logits"]
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert not any(
        c.cache_weight or c._ws_cache is not None for c in std_convs(model)
    )  # state restored
