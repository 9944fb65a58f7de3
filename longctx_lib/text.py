"""Real text without a download: the Python standard library's own source files.

Chapter 4 trains character-level language models on it. Every Python installation
ships these files, so the corpus needs no network; its exact contents depend on the
Python version (the book states which one it read).

Text is encoded as UTF-8 bytes (a vocabulary of 256). Files are split into training
and validation sets by a hash of their path, so the split is the same on every
machine with the same Python version, and no file is in both.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["VOCAB_SIZE", "stdlib_files", "stdlib_corpus", "random_windows", "encode", "decode"]

VOCAB_SIZE = 256  # bytes


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The ``.py`` files of the standard library (tests and site-packages left out), sorted."""
    base = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise ValueError(f"root must be a directory of Python sources; {str(base)!r} is not one")
    skip = {"site-packages", "test", "tests", "idlelib", "__pycache__", "dist-packages"}
    files = [p for p in base.rglob("*.py") if not skip & set(p.relative_to(base).parts)]
    return sorted(files)


def _is_validation(path: Path, base: Path, fraction: float) -> bool:
    digest = hashlib.sha256(str(path.relative_to(base)).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def stdlib_corpus(split: str = "train", *, root: str | Path | None = None, validation: float = 0.05,
                  max_bytes: int | None = None) -> Tensor:
    """The standard library's source as one int64 tensor of bytes ``(n,)``.

    Args:
        split: ``"train"`` or ``"validation"`` (about ``validation`` of the files).
        root: another directory of ``.py`` files instead of the standard library.
        max_bytes: keep only the first ``max_bytes`` bytes (files in sorted order).
    """
    if split not in ("train", "validation"):
        raise ValueError(f'split must be "train" or "validation"; got {split!r}')
    if not 0.0 < validation < 1.0:
        raise ValueError(f"validation must be a fraction in (0, 1); got {validation!r}")
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive integer or None; got {max_bytes!r}")
    base = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in stdlib_files(base):
        if _is_validation(path, base, validation) != (split == "validation"):
            continue
        data = path.read_bytes() + b"\n"
        chunks.append(data)
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    if not chunks:
        raise ValueError(f"no .py files for split {split!r} under {str(base)!r}")
    joined = b"".join(chunks)[:max_bytes]
    return torch.frombuffer(bytearray(joined), dtype=torch.uint8).to(torch.int64)


def random_windows(corpus: Tensor, batch: int, length: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``batch`` random windows of ``length`` consecutive bytes: ``(batch, length)`` int64."""
    if not isinstance(corpus, Tensor) or corpus.dim() != 1:
        raise ValueError("corpus must be a 1-D tensor of token ids (see stdlib_corpus)")
    for name, value in (("batch", batch), ("length", length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if length > corpus.numel():
        raise ValueError(f"length {length} exceeds the corpus ({corpus.numel()} tokens)")
    starts = torch.randint(0, corpus.numel() - length + 1, (batch,), generator=generator)
    return corpus[starts[:, None] + torch.arange(length)]


def encode(text: str) -> Tensor:
    """UTF-8 bytes of ``text`` as int64 ``(n,)``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)


def decode(tokens: Tensor) -> str:
    """Bytes back to text (invalid UTF-8 sequences shown as U+FFFD)."""
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.int64:
        raise TypeError("tokens must be an int64 tensor of byte values")
    return bytes(tokens.reshape(-1).clamp(0, 255).tolist()).decode("utf-8", errors="replace")

