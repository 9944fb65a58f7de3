"""The standard-library corpus (chapter 4): deterministic, split without overlap, bytes round-trip."""

from __future__ import annotations

import pytest
import torch

from longctx_lib.text import VOCAB_SIZE, decode, encode, random_windows, stdlib_corpus, stdlib_files


def test_corpus_is_large_deterministic_and_bytes():
    files = stdlib_files()
    assert len(files) > 300  # the standard library has well over a thousand modules
    train = stdlib_corpus("train", max_bytes=200_000)
    assert train.dtype == torch.int64 and train.numel() == 200_000
    assert int(train.min()) >= 0 and int(train.max()) < VOCAB_SIZE
    assert torch.equal(train, stdlib_corpus("train", max_bytes=200_000))
    assert "def " in decode(train[:20_000])


def test_split_has_no_shared_files(tmp_path):
    for i in range(40):
        (tmp_path / f"m{i}.py").write_text(f"# module {i}\nx = {i}\n")
    train, val = stdlib_corpus("train", root=tmp_path, validation=0.3), stdlib_corpus("validation", root=tmp_path, validation=0.3)
    train_text, val_text = decode(train), decode(val)
    names = {f"# module {i}\n" for i in range(40)}
    in_train = {n for n in names if n in train_text}
    in_val = {n for n in names if n in val_text}
    assert in_train and in_val and not in_train & in_val
    assert len(in_train | in_val) == 40


def test_windows_and_round_trip():
    corpus = encode("héllo, world: " * 10)
    windows = random_windows(corpus, 3, 8, generator=torch.Generator().manual_seed(0))
    assert windows.shape == (3, 8)
    assert decode(encode("héllo")) == "héllo"
    with pytest.raises(ValueError, match="length"):
        random_windows(corpus, 1, corpus.numel() + 1)
