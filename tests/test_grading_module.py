"""longctx_lib.grading without nbgrader: the grader's verdict, the kernel side, the static scan."""

from __future__ import annotations

import pickle

import pytest
import torch

from longctx_lib import grading
from longctx_lib.attention import scaled_dot_product_attention


def _reference_attention(q, k, v, causal=False, key_padding_mask=None):
    # a copy of the reference through a lambda-free path the guard does not block
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    blocked = torch.zeros(q.shape[-2], k.shape[-2], dtype=torch.bool)
    if causal:
        blocked = torch.ones_like(blocked).triu(1)
    if key_padding_mask is not None:
        blocked = blocked | key_padding_mask[:, None, None, :]
    dead = blocked.all(-1, keepdim=True)
    w = torch.softmax(scores.masked_fill(blocked & ~dead, float("-inf")), -1).masked_fill(dead, 0.0)
    return w @ v


def _grade(tmp_path, monkeypatch, suite, fn):
    """Run the kernel side and the grader side as the grader would, in one process."""
    monkeypatch.setenv(grading.GRADER_DIR_ENV, str(tmp_path))
    cases = grading.draw_cases(suite, tmp_path)
    try:
        grading.check(suite, fn)
    except AssertionError:
        pass  # the local verdict is advice; the grader's is the one that counts
    return grading.verify(suite, tmp_path, cases)


def test_right_answer_passes_and_wrong_fails(tmp_path, monkeypatch):
    assert _grade(tmp_path, monkeypatch, "attention_values", _reference_attention) == []
    wrong = lambda q, k, v, causal=False, key_padding_mask=None: _reference_attention(q * 2, k, v, causal, key_padding_mask)
    problems = _grade(tmp_path, monkeypatch, "attention_values", wrong)
    assert problems and "checked by the grader" in problems[0]


def test_calling_the_library_is_blocked(tmp_path, monkeypatch):
    lib = lambda q, k, v, causal=False, key_padding_mask=None: scaled_dot_product_attention(
        q, k, v, causal=causal, key_padding_mask=key_padding_mask)
    problems = _grade(tmp_path, monkeypatch, "attention_small", lib)
    assert problems and "graded on its own" in problems[0]


def test_no_results_is_a_failure(tmp_path):
    cases = grading.draw_cases("max_length_small", tmp_path)
    assert "did not hand its results" in grading.verify("max_length_small", tmp_path, cases)[0]


class Liar(int):
    """Equal to everything: what a pickled object could do if the grader unpickled it."""

    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


def test_results_that_are_not_plain_data_are_refused(tmp_path):
    cases = grading.draw_cases("max_length_small", tmp_path)

    (tmp_path / "max_length_small.out.pt").write_bytes(pickle.dumps([Liar(0)] * len(cases)))
    assert "plain data" in grading.verify("max_length_small", tmp_path, cases)[0]


@pytest.mark.parametrize("value, words", [
    (float("nan"), "NaN"), ("meta", "meta tensor"), ("float32", "dtype torch.float32"), ("int", "expected a torch.Tensor"),
])
def test_bad_outputs_are_named(tmp_path, monkeypatch, value, words):
    def fn(q, k, v, causal=False, key_padding_mask=None):
        out = _reference_attention(q, k, v, causal, key_padding_mask)
        if value == "meta":
            return out.to("meta")
        if value == "float32":
            return out.float()
        if value == "int":
            return 3
        return torch.full_like(out, value)
    problems = _grade(tmp_path, monkeypatch, "attention_values", fn)
    assert problems and words in problems[0], problems


def test_graded_on_its_own_restores():
    import torch.nn.functional as F

    before = F.scaled_dot_product_attention
    with grading.graded_on_its_own(scaled_dot_product_attention):
        with pytest.raises(AssertionError, match="graded on its own"):
            scaled_dot_product_attention(*(torch.zeros(1, 1, 1, 1),) * 3)
        with pytest.raises(AssertionError):
            F.scaled_dot_product_attention(*(torch.zeros(1, 1, 1, 1),) * 3)
    assert F.scaled_dot_product_attention is before
    assert scaled_dot_product_attention(*(torch.zeros(1, 1, 1, 1),) * 3).shape == (1, 1, 1, 1)


@pytest.mark.parametrize("source, suite, flagged", [
    ("from longctx_lib.attention import scaled_dot_product_attention as r", "attention_values", True),
    ("import longctx_lib\nx = longctx_lib.costs.score_matrix_bytes", "costs", True),
    ("import longctx_lib\nx = longctx_lib.costs.score_matrix_bytes", "attention_values", False),
    ("import longctx_lib as L", "attention_values", True),
    ("import torch.nn.functional as F\nF.scaled_dot_product_attention", "attention_small", True),
    ("getattr(F, 'scaled_dot_product_attention')", "attention_small", True),
    ("from longctx_lib.device import resolve_device", "attention_values", False),
    ("def masked_attention(q, k, v):\n    return q  # unlike longctx_lib's", "attention_values", False),
    ("this is not python (", "attention_values", False),
])
def test_static_scan(source, suite, flagged):
    assert bool(grading.forbidden_uses(suite, [source])) == flagged


def test_library_changes_are_detected(tmp_path):
    before = grading.library_fingerprint()
    assert grading.changed_library_files(before) == []
    some = next(iter(before))
    assert grading.changed_library_files({**before, some: b"# changed"}) == [some.rsplit("/", 1)[-1]]
