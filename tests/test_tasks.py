"""Tests for longctx_lib.tasks."""

import pytest
import torch

from longctx_lib.tasks import duplication_accuracy, duplication_batch, duplication_targets_mask


def test_duplication_layout():
    g = torch.Generator().manual_seed(0)
    x = duplication_batch(3, 16, vocab_size=8, generator=g)
    assert x.shape == (3, 16) and x.dtype == torch.long
    assert torch.all(x[:, 0] == 0) and torch.all(x[:, 8] == 0)
    assert torch.equal(x[:, 1:8], x[:, 9:])
    assert x[:, 1:8].min() >= 1 and x[:, 1:8].max() <= 7


def test_duplication_is_reproducible():
    a = duplication_batch(2, 10, generator=torch.Generator().manual_seed(5))
    b = duplication_batch(2, 10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_accuracy_scores_only_the_copy():
    x = duplication_batch(2, 12, vocab_size=5, generator=torch.Generator().manual_seed(1))
    perfect = torch.nn.functional.one_hot(x.roll(-1, dims=1), 5).float()  # predicts token t+1
    assert duplication_accuracy(perfect, x) == 1.0
    # Wrong (mostly) in the first half and on the separator: still a perfect copy score.
    noisy = perfect.clone()
    noisy[:, :6] = 0.0
    noisy[:, :6, 3] = 1.0  # always predicts symbol 3 before the copy starts
    assert duplication_accuracy(noisy, x) == 1.0
    mask = duplication_targets_mask(12)
    assert mask.sum() == 5 and not mask[:6].any()


@pytest.mark.parametrize("length", [3, 5, 2, "8"])
def test_bad_length(length):
    with pytest.raises(ValueError, match="length"):
        duplication_batch(1, length)


def test_bad_vocab_and_batch():
    with pytest.raises(ValueError, match="vocab_size"):
        duplication_batch(1, 8, vocab_size=1)
    with pytest.raises(ValueError, match="batch"):
        duplication_batch(0, 8)
    with pytest.raises(ValueError, match="logits"):
        duplication_accuracy(torch.zeros(2, 8), torch.zeros(2, 8, dtype=torch.long))
