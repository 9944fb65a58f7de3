"""Character-level training (chapter 4): the loop learns, bits per character are what they say,
checkpoints round-trip, load-else-train falls back to training, and the shipped models are
the ones the current run configs describe."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import longctx_lib.charlm as charlm
from longctx_lib.charlm import (
    CHARLM_RUNS,
    CHECKPOINT_DIR,
    bits_per_char,
    evaluate_char_lm,
    load_char_lm,
    load_or_train_char_lm,
    sample_text,
    save_char_lm,
    train_char_lm,
    train_char_lm_run,
)
from longctx_lib.reformer import ReformerConfig, ReformerLM
from longctx_lib.text import encode, random_windows

SMALL = dict(vocab_size=256, d_model=32, n_heads=2, d_ff=64, n_layers=2, n_hashes=2, chunk_size=8, max_length=128)


def tiny_run(**changes) -> dict:
    """A run spec shaped like CHARLM_RUNS' that trains in well under a second."""
    run = copy.deepcopy(CHARLM_RUNS["lsh-1k"])
    run["model"].update(d_model=16, n_heads=2, d_ff=32, n_layers=1, chunk_size=8, max_length=32)
    run.update(context=32, batch=2, steps=3, warmup=1, eval_every=2, eval_tokens=64, final_eval_tokens=64)
    run.update(changes)
    return run


def test_untrained_model_is_near_eight_bits_and_training_lowers_it():
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(**SMALL))
    text = encode("def f(x):\n    return x + 1\n" * 200)
    before = bits_per_char(model, text, context=32, n_windows=8)
    assert abs(before - 8.0) < 1.0  # a fresh model guesses nearly uniformly over 256 bytes
    history = train_char_lm(model, text, text, context=32, steps=60, batch=4, lr=3e-3, eval_every=30,
                            eval_windows=8, progress=False)
    assert history["step"] == [30, 60]
    assert history["tokens"] == [30 * 4 * 32, 60 * 4 * 32]
    assert history["seconds"][0] < history["seconds"][1]
    assert history["validation_bpc"][-1] < 0.6 * before  # a repeated line is easy to learn


def test_bits_per_char_is_loss_over_ln2():
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(**SMALL)).eval()
    text = encode("abcdefgh" * 50)
    g = torch.Generator().manual_seed(0)
    windows = random_windows(text, 4, 17, generator=g)
    torch.manual_seed(0)  # bits_per_char seeds LSH's rotations with its seed
    expected = model.loss(windows).item() / math.log(2)
    assert abs(bits_per_char(model, text, context=16, n_windows=4, batch=4, seed=0) - expected) < 1e-5


def test_tiled_windows_score_the_same_characters_whatever_the_context():
    # A model that ignores its context (one bucket, so the score is a per-character
    # unigram table) gives the same bits per character on tiled windows of any context.
    class Unigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.randn(256, dtype=torch.float64))

        def loss(self, tokens, targets):
            return torch.nn.functional.cross_entropy(self.logits.expand(targets.numel(), -1), targets.flatten())

    text = encode("".join(chr(97 + (i * 7) % 26) for i in range(600)))
    model = Unigram()
    values = [bits_per_char(model, text, context=c, n_windows=512 // c, batch=3, tiled=True) for c in (8, 64, 512)]
    assert max(values) - min(values) < 1e-9
    with pytest.raises(ValueError, match="n_windows"):
        bits_per_char(model, text, context=64, n_windows=10, tiled=True)


def test_evaluation_and_sampling_are_seeded_and_leave_the_random_state_alone():
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(**SMALL))  # LSH draws random rotations at every call
    text = encode("import os\nimport sys\n" * 40)
    state = torch.get_rng_state()
    a = bits_per_char(model, text, context=32, n_windows=4, seed=3)
    b = bits_per_char(model, text, context=32, n_windows=4, seed=3)
    s1 = sample_text(model, "def ", 12, seed=5)
    s2 = sample_text(model, "def ", 12, seed=5)
    assert a == b and s1 == s2
    assert isinstance(s1, str) and len(s1.encode("utf-8", errors="replace")) >= 1
    assert torch.equal(torch.get_rng_state(), state)


def test_learning_rate_schedule():
    f = charlm._lr_factor
    assert f(5, 100, 10, "cosine") == 0.5  # linear warm-up
    assert f(10, 100, 10, "cosine") == 1.0
    assert abs(f(100, 100, 10, "cosine") - 0.1) < 1e-12  # a tenth at the end
    assert f(100, 100, 10, "constant") == 1.0


def test_build_char_lm_starts_the_position_tables_as_sinusoids():
    torch.manual_seed(0)
    model = charlm.build_char_lm(tiny_run())
    rows = model.positions.rows.detach()  # (a, d/2): row i is sin(i w), cos(i w) interleaved
    assert torch.equal(rows[0, 0::2], torch.zeros(rows.shape[1] // 2))
    assert torch.equal(rows[0, 1::2], torch.ones(rows.shape[1] // 2))
    torch.testing.assert_close(rows[3, 0], torch.tensor(math.sin(3.0)))  # w_0 = 1
    torch.testing.assert_close(rows[:, 0::2] ** 2 + rows[:, 1::2] ** 2, torch.ones_like(rows[:, 0::2]))
    assert model.positions.rows.requires_grad  # trained as usual
    torch.manual_seed(0)
    plain = charlm.build_char_lm(tiny_run(position_init="random"))
    assert plain.positions.rows.abs().max() < 0.2  # ReformerLM's own small random start


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    text = encode("class A:\n    pass\n" * 100)
    model, history = train_char_lm_run(tiny_run(), progress=False, train=text, validation=text)
    assert history["step"] == [2, 3] and history["run"] == tiny_run()
    path = save_char_lm(model, history, tmp_path / "x.pt", dtype=torch.float32)
    again, history2 = load_char_lm(path)
    assert history2 == history and again.config == model.config and not again.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)
    # the default float16 storage: weights within float16's rounding, loaded back as float32
    half, _ = load_char_lm(save_char_lm(model, history, tmp_path / "h.pt"))
    for k, v in model.state_dict().items():
        assert half.state_dict()[k].dtype == v.dtype
        torch.testing.assert_close(half.state_dict()[k], v, rtol=2**-10, atol=1e-7)


def test_load_or_train_trains_on_a_config_mismatch_and_keeps_the_stale_file(tmp_path, monkeypatch):
    text = encode("return None\n" * 100)
    trained = []

    def fake_train(run, progress=True):  # the real loop on a tiny text, recording that it ran
        trained.append(run)
        return train_char_lm_run(run, progress=progress, train=text, validation=text)

    monkeypatch.setattr(charlm, "train_char_lm_run", fake_train)
    with pytest.warns(UserWarning, match="no checkpoint"):
        load_or_train_char_lm("tiny", run=tiny_run(), checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "tiny.pt").is_file() and len(trained) == 1
    before = (tmp_path / "tiny.pt").read_bytes()
    model, history = load_or_train_char_lm("tiny", run=tiny_run(), checkpoint_dir=tmp_path, progress=False)
    assert len(trained) == 1  # the same run: loaded
    with pytest.warns(UserWarning, match="another configuration.*train_charlm.py"):
        model, history = load_or_train_char_lm("tiny", run=tiny_run(steps=2), checkpoint_dir=tmp_path,
                                               progress=False)
    assert len(trained) == 2 and history["step"][-1] == 2
    assert (tmp_path / "tiny.pt").read_bytes() == before  # a stale file is not overwritten silently


# --------------------------------------------------- the shipped checkpoints
def _summary() -> dict:
    path = CHECKPOINT_DIR / "histories.json"
    assert path.is_file(), f"missing {path}; regenerate with: {charlm.REGENERATE_COMMAND}"
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", list(CHARLM_RUNS))
def test_shipped_checkpoint_matches_the_current_run_and_its_recorded_figures(name, monkeypatch):
    path = CHECKPOINT_DIR / f"{name}.pt"
    assert path.is_file(), f"missing {path}; regenerate with: {charlm.REGENERATE_COMMAND}"
    assert path.stat().st_size < 2_000_000
    # load_or_train_char_lm must load, never train: a config changed without regenerating fails here
    monkeypatch.setattr(charlm, "train_char_lm_run", lambda *a, **k: pytest.fail(
        f"{name}.pt was trained with another run config; regenerate with: {charlm.REGENERATE_COMMAND}"))
    model, history = load_or_train_char_lm(name, progress=False)
    run = CHARLM_RUNS[name]
    assert history["run"] == run and history["step"][-1] == run["steps"]
    assert history["tokens"][-1] == run["steps"] * run["batch"] * run["context"]
    recorded = _summary()["runs"][name]
    # A deterministic replay (tiled windows, seeded LSH) of what the regeneration script
    # measured on these float16 weights, on a few characters to stay quick. 1e-3 bits leaves
    # room for summation order only (thread count, BLAS build: ~1e-6 relative in float32).
    bpc = evaluate_char_lm(model, name, n_tokens=recorded["replay"]["n_tokens"])
    assert abs(bpc - recorded["replay"]["bpc"]) < 1e-3, (bpc, recorded["replay"])
    # Storing the weights in float16 (relative rounding 2**-11) moved the figure the training
    # loop measured on float32 weights (the last point of the curve) by under a hundredth of a bit.
    assert abs(recorded["checkpoint_validation_bpc"] - history["validation_bpc"][-1]) < 0.01
    assert bpc < 4.0  # learned: a uniform guess is 8 bits, a unigram model of Python source about 4.4
