"""Tests for longctx_lib.tasks."""

import pytest
import torch

from longctx_lib.tasks import (
    FILLER_TOKENS,
    KEY_TOKEN,
    PASSKEY_VOCAB,
    QUERY_TOKEN,
    duplication_accuracy,
    duplication_batch,
    duplication_targets_mask,
    passkey_accuracy,
    passkey_batch,
    passkey_targets_mask,
)


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


# --------------------------------------------------------------------------- passkey retrieval


@pytest.mark.parametrize("length, n_digits", [(12, 5), (64, 5), (257, 3)])
def test_passkey_layout(length, n_digits):
    tokens, start = passkey_batch(64, length, n_digits=n_digits, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (64, length) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < PASSKEY_VOCAB
    for row, s in zip(tokens, start.tolist()):
        assert row[s] == KEY_TOKEN and (row == KEY_TOKEN).sum() == 1
        assert row[length - n_digits - 1] == QUERY_TOKEN and (row == QUERY_TOKEN).sum() == 1
        key = row[s + 1 : s + 1 + n_digits]
        assert torch.equal(key, row[length - n_digits:]) and int(key.max()) <= 9
        filler = torch.ones(length, dtype=torch.bool)
        filler[s : s + n_digits + 1] = False
        filler[length - n_digits - 1 :] = False
        assert set(row[filler].tolist()) <= set(FILLER_TOKENS)


def test_passkey_depth():
    length, n = 106, 5
    room = length - 2 * (n + 1)
    for depth, expected in ((0.0, 0), (1.0, room), (0.5, room // 2)):
        _, start = passkey_batch(4, length, n_digits=n, depth=depth)
        assert start.tolist() == [expected] * 4
    _, start = passkey_batch(2000, length, generator=torch.Generator().manual_seed(1))
    assert int(start.min()) == 0 and int(start.max()) == room  # uniform over every possible depth


def test_passkey_accuracy_scores_the_answer_only():
    tokens, _ = passkey_batch(8, 40, generator=torch.Generator().manual_seed(2))
    logits = torch.zeros(8, 40, PASSKEY_VOCAB)
    logits[:, :-1].scatter_(2, tokens[:, 1:, None], 1.0)  # a perfect next-token predictor
    assert passkey_accuracy(logits, tokens) == 1.0
    assert passkey_targets_mask(40).sum() == 5
    logits[:, :-7] = 0.0  # wrong everywhere before the answer: still perfect
    assert passkey_accuracy(logits, tokens) == 1.0
    logits[:4, -2] = 0.0  # the last digit wrong for half the batch
    logits[:4, -2, (tokens[:4, -1] + 1) % 10] = 1.0
    assert passkey_accuracy(logits, tokens) == 0.5
    assert passkey_accuracy(logits, tokens, per_digit=True) == pytest.approx(1 - 4 / 40)
