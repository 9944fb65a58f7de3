"""Tests for longctx_lib.tasks."""

import pytest
import torch

from longctx_lib.tasks import (
    ASK_TOKEN,
    BLANK_TOKEN,
    DISTRACTOR_TOKENS,
    FACT2_TOKEN,
    FACT_TOKEN,
    FILLER_TOKENS,
    KEY_TOKEN,
    N_SYMBOLS,
    PASSKEY_VOCAB,
    QUERY_TOKEN,
    SEP_TOKEN,
    TASK_VOCAB,
    answer_accuracy,
    associative_retrieval_batch,
    copy_batch,
    duplication_accuracy,
    duplication_batch,
    duplication_targets_mask,
    fact_batch,
    passkey_accuracy,
    passkey_batch,
    passkey_targets_mask,
    reverse_batch,
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


# --------------------------------------------------------------------------- chapter 6: RMT tasks
def test_task_tokens_are_distinct_and_fit_the_vocabulary():
    markers = [SEP_TOKEN, ASK_TOKEN, FACT_TOKEN, FACT2_TOKEN, BLANK_TOKEN]
    everything = list(range(N_SYMBOLS)) + markers + list(DISTRACTOR_TOKENS)
    assert len(set(everything)) == len(everything) == TASK_VOCAB
    assert min(everything) == 0 and max(everything) == TASK_VOCAB - 1


def _only_at_end(mask, n_answer):
    expected = torch.zeros_like(mask)
    expected[:, mask.shape[1] - n_answer:] = True
    return torch.equal(mask, expected)


@pytest.mark.parametrize("make, flip", [(copy_batch, False), (reverse_batch, True)])
def test_copy_and_reverse(make, flip):
    tokens, answers = make(64, 7, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == answers.shape == (64, 15) and tokens.dtype == torch.long and answers.dtype == torch.bool
    assert _only_at_end(answers, 7)
    first, second = tokens[:, :7], tokens[:, 8:]
    assert torch.all(tokens[:, 7] == SEP_TOKEN)
    assert int(first.min()) >= 0 and int(first.max()) < N_SYMBOLS
    assert torch.equal(second, first.flip(1) if flip else first)
    assert not torch.equal(first, first.flip(1)), "the batch should tell copying from reversing"
    assert len(first.unique()) == N_SYMBOLS, "symbols drawn from all 16"


def test_associative_retrieval():
    tokens, answers = associative_retrieval_batch(200, 5, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == answers.shape == (200, 13) and _only_at_end(answers, 1)
    keys, values = tokens[:, 0:10:2], tokens[:, 1:10:2]
    assert int(tokens[:, :10].max()) < N_SYMBOLS
    assert all(len(set(row.tolist())) == 5 for row in keys), "keys are distinct"
    assert torch.all(tokens[:, 10] == ASK_TOKEN)
    asked, answer = tokens[:, 11], tokens[:, 12]
    slot = (keys == asked[:, None]).float().argmax(1)
    assert torch.all((keys == asked[:, None]).sum(1) == 1), "the asked key is one of the keys"
    assert torch.equal(answer, values[torch.arange(200), slot]), "the answer is the asked key's value"
    assert len(slot.unique()) == 5, "every pair gets asked"
    # all 16 symbols can be keys at once
    tokens, _ = associative_retrieval_batch(3, N_SYMBOLS, generator=torch.Generator().manual_seed(1))
    assert all(sorted(row[0:32:2].tolist()) == list(range(N_SYMBOLS)) for row in tokens)


@pytest.mark.parametrize("task", ["memorize", "detect", "reasoning"])
def test_fact_layout(task):
    length, n_values = 24, 7
    tokens, answers = fact_batch(300, length, task=task, n_values=n_values, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == answers.shape == (300, length) and tokens.dtype == torch.long and _only_at_end(answers, 1)
    assert torch.all(tokens[:, -2] == ASK_TOKEN)
    answer = tokens[:, -1]
    starts = []
    for row in tokens:
        body = row[:-2]
        fact = (body == FACT_TOKEN).nonzero().flatten().tolist()
        fact2 = (body == FACT2_TOKEN).nonzero().flatten().tolist()
        assert len(fact) == 1 and len(fact2) == (1 if task == "reasoning" else 0), "each fact present once"
        s = fact[0]
        assert s + 1 < length - 2, "the fact ends before the question"
        a = int(body[s + 1])
        assert 0 <= a < n_values
        facts = {s, s + 1}
        if task == "reasoning":
            s2 = fact2[0]
            b = int(body[s2 + 1])
            assert 0 <= b < n_values and s2 + 1 < length - 2
            assert not facts & {s2, s2 + 1}, "the two facts do not overlap"
            facts |= {s2, s2 + 1}
            assert int(row[-1]) == (a + b) % n_values
        else:
            assert int(row[-1]) == a
        others = [int(t) for i, t in enumerate(body) if i not in facts]
        assert set(others) <= set(DISTRACTOR_TOKENS), "everything else is distractor text"
        starts.append(s)
    if task == "memorize":
        assert set(starts) == {0}
    else:
        assert min(starts) <= 1 and max(starts) >= length - 6, "the fact is placed anywhere before the question"
    assert set(answer.tolist()) == set(range(n_values)), "every value occurs as an answer"


def test_reasoning_needs_both_facts_in_either_order():
    tokens, _ = fact_batch(300, 20, task="reasoning", generator=torch.Generator().manual_seed(2))
    first = [(row == FACT_TOKEN).nonzero().item() < (row == FACT2_TOKEN).nonzero().item() for row in tokens]
    assert 0 < sum(first) < len(first), "FACT and FACT2 come in either order"


@pytest.mark.parametrize(
    "make, args",
    [(copy_batch, (4, 6)), (reverse_batch, (4, 6)), (associative_retrieval_batch, (4, 6)),
     (fact_batch, (4, 30)), (lambda b, n, **kw: fact_batch(b, n, task="reasoning", **kw), (4, 30))],
)
def test_ch6_tasks_are_reproducible(make, args):
    a = make(*args, generator=torch.Generator().manual_seed(5))
    b = make(*args, generator=torch.Generator().manual_seed(5))
    c = make(*args, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_answer_accuracy_scores_every_answer_token():
    tokens, answers = copy_batch(8, 5, generator=torch.Generator().manual_seed(3))
    logits = torch.zeros(8, 11, TASK_VOCAB)
    logits[:, :-1].scatter_(2, tokens[:, 1:, None], 1.0)  # a perfect next-token predictor
    assert answer_accuracy(logits, tokens, answers) == 1.0
    logits[:, :5] = 0.0  # wrong everywhere before the answers are predicted (positions 5 .. 9): still perfect
    logits[:, :5, SEP_TOKEN] = 1.0
    assert answer_accuracy(logits, tokens, answers) == 1.0
    logits[:2, 7] = 0.0  # one answer token wrong in two of the eight sequences
    logits[:2, 7, (tokens[:2, 8] + 1) % N_SYMBOLS] = 1.0
    assert answer_accuracy(logits, tokens, answers) == 0.75
    logits[:, 9] = torch.flip(logits[:, 9], dims=(-1,))  # the last answer wrong everywhere
    assert answer_accuracy(logits, tokens, answers) == 0.0
