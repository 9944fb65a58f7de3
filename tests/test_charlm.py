"""Character-level training (chapter 4): the loop learns, and bits per character are what they say."""

from __future__ import annotations

import math

import torch

from longctx_lib.charlm import bits_per_char, train_char_lm
from longctx_lib.reformer import ReformerConfig, ReformerLM
from longctx_lib.text import encode

SMALL = dict(vocab_size=256, d_model=32, n_heads=2, d_ff=64, n_layers=2, n_hashes=2, chunk_size=8, max_length=128)


def test_untrained_model_is_near_eight_bits_and_training_lowers_it():
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(**SMALL))
    text = encode("def f(x):\n    return x + 1\n" * 200)
    before = bits_per_char(model, text, context=32, n_windows=8)
    assert abs(before - 8.0) < 1.0  # a fresh model guesses nearly uniformly over 256 bytes
    history = train_char_lm(model, text, text, context=32, steps=60, batch=4, lr=3e-3, eval_every=30,
                            eval_windows=8, progress=False)
    assert history["step"] == [30, 60]
    assert history["validation_bpc"][-1] < 0.6 * before  # a repeated line is easy to learn


def test_bits_per_char_is_loss_over_ln2():
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(**SMALL)).eval()
    text = encode("abcdefgh" * 50)
    g = torch.Generator().manual_seed(0)
    from longctx_lib.text import random_windows

    windows = random_windows(text, 4, 17, generator=g)
    expected = model.loss(windows).item() / math.log(2)
    assert abs(bits_per_char(model, text, context=16, n_windows=4, batch=4, seed=0) - expected) < 1e-5
