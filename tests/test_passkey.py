"""Passkey retrieval with Infini-attention (chapter 5): the training loop and its history, the
optimizer's gate learning rate, the evaluation grid (checked against an oracle), checkpoints
and load-else-train, and the shipped models against their recorded figures."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import longctx_lib.passkey as pk
from longctx_lib.infini import InfiniTransformer
from longctx_lib.tasks import KEY_TOKEN, PASSKEY_VOCAB, QUERY_TOKEN, passkey_accuracy, passkey_batch


def tiny_run(**changes) -> dict:
    """A run spec shaped like PASSKEY_RUNS' that trains in well under a second."""
    run = copy.deepcopy(pk.PASSKEY_RUNS["linear"])
    run.update(d_model=16, n_heads=2, d_ff=32, n_layers=1, segment_length=8, train_length=24, n_digits=2,
               steps=6, batch=4, warmup=1, record_every=2)
    run.update(changes)
    return run


class Oracle(nn.Module):
    """Reads a passkey stream like an InfiniTransformer (segment by segment, state carried
    across segments) and predicts every answer digit right; ``wrong_last`` misses the last
    one, ``only_even`` answers only passkeys whose first digit is even."""

    def __init__(self, segment_length: int, n_digits: int, *, wrong_last: bool = False, only_even: bool = False):
        super().__init__()
        self.segment_length, self.n_digits = segment_length, n_digits
        self.wrong_last, self.only_even = wrong_last, only_even
        self.dummy = nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def stream(self, segments):
        state = None
        for part in segments:
            b, s = part.shape
            if state is None:
                state = [{"digits": [], "since_key": None, "since_query": None} for _ in range(b)]
            logits = torch.zeros(b, s, PASSKEY_VOCAB)
            for i in range(b):
                st = state[i]
                for t in range(s):
                    tok = int(part[i, t])
                    if tok == KEY_TOKEN:
                        st["since_key"] = 0
                    elif st["since_key"] is not None and st["since_key"] < self.n_digits and tok < 10:
                        st["digits"].append(tok)
                        st["since_key"] += 1
                    if tok == QUERY_TOKEN:
                        st["since_query"] = 0
                    elif st["since_query"] is not None:
                        st["since_query"] += 1
                    j = st["since_query"]
                    if j is not None and j < self.n_digits:
                        guess = st["digits"][j]
                        if (self.wrong_last and j == self.n_digits - 1) or (self.only_even and st["digits"][0] % 2):
                            guess = (guess + 1) % 10
                        logits[i, t, guess] = 1.0
            yield logits


# ------------------------------------------------------------------ the runs
def test_shipped_runs_are_complete_and_differ_only_where_they_should():
    assert {"linear", "delta", "gate-lr-small", "gate-lr-large"} <= set(pk.PASSKEY_RUNS)
    base = pk.PASSKEY_RUNS["linear"]
    for name, run in pk.PASSKEY_RUNS.items():
        assert pk._check_run(run) == run
        assert run["train_length"] == pk.TRAIN_LENGTH and run["train_length"] % run["segment_length"] == 0
        changed = {k for k in run if run[k] != base[k]}
        assert changed <= {"rule", "gate_lr"}, (name, changed)
    assert pk.PASSKEY_RUNS["delta"]["rule"] == "delta"
    assert pk.PASSKEY_RUNS["gate-lr-small"]["gate_lr"] < base["gate_lr"] < pk.PASSKEY_RUNS["gate-lr-large"]["gate_lr"]
    assert pk.REGENERATE_COMMAND == "python scripts/train_passkey.py"


def test_build_passkey_model_follows_the_run():
    model = pk.build_passkey_model("delta")
    run = pk.PASSKEY_RUNS["delta"]
    assert isinstance(model, InfiniTransformer) and model.passkey_run == run
    assert model.segment_length == run["segment_length"] and model.embed.num_embeddings == PASSKEY_VOCAB
    assert len(model.blocks) == run["n_layers"] and all(b.attn.rule == "delta" for b in model.blocks)
    assert model.gates().shape == (run["n_layers"], run["n_heads"])


# --------------------------------------------------------------- the optimizer
@pytest.mark.parametrize("name", ["gate-lr-small", "gate-lr-large", "linear"])
def test_optimizer_gives_the_gates_their_own_learning_rate(name):
    run = pk.PASSKEY_RUNS[name]
    model = pk.build_passkey_model(name)
    groups = {g["name"]: g for g in pk.passkey_optimizer(model, name).param_groups}
    assert set(groups) == {"weights", "gates"}
    assert groups["gates"]["lr"] == run["gate_lr"] and groups["weights"]["lr"] == run["lr"]
    gate_ids = {id(p) for p in model.gate_parameters()}
    assert {id(p) for p in groups["gates"]["params"]} == gate_ids
    assert {id(p) for p in groups["weights"]["params"]} == {id(p) for p in model.parameters()} - gate_ids


def test_training_moves_the_gates_by_gate_lr_only():
    """Adam moves a parameter by about its learning rate per step, whatever the gradient's size:
    with gate_lr 1e-12 the gates cannot move measurably in 6 steps, with 0.05 they must
    (6 steps of ~0.05 in beta move sigmoid(beta) by ~0.07, unless the gradient is exactly 0)."""
    _, frozen = pk.train_passkey(tiny_run(gate_lr=1e-12, warmup=0, record_every=1), progress=False)
    _, moving = pk.train_passkey(tiny_run(gate_lr=0.05, warmup=0, record_every=1), progress=False)
    assert max(abs(g - 0.5) for g in frozen["gates"][-1]) < 1e-9
    assert max(abs(g - 0.5) for g in moving["gates"][-1]) > 0.01
    assert frozen["loss"][0] == moving["loss"][0]  # the same seed, data and start: the first step is the same


# ------------------------------------------------------------------ training
def test_train_passkey_history_has_the_documented_shape_and_leaves_the_rng_alone():
    state = torch.get_rng_state()
    model, history = pk.train_passkey(tiny_run(steps=7), progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert history["step"] == [2, 4, 6, 7]  # every record_every steps and the last
    for key in ("loss", "accuracy", "gates", "elapsed"):
        assert len(history[key]) == 4, key
    assert all(len(g) == 1 * 2 for g in history["gates"]) and history["gates_initial"] == [0.5, 0.5]
    assert all(0.0 <= a <= 1.0 for a in history["accuracy"])
    assert isinstance(history["seconds"], float) and history["elapsed"] == sorted(history["elapsed"])
    assert history["run"] == tiny_run(steps=7) and history["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert not model.training
    # steps= overrides the run's and is what the history records
    _, short = pk.train_passkey(tiny_run(), steps=3, progress=False)
    assert short["step"] == [2, 3] and short["run"]["steps"] == 3
    # the same seed gives the same numbers
    _, again = pk.train_passkey(tiny_run(steps=7), progress=False)
    assert again["loss"] == history["loss"] and again["gates"] == history["gates"]


def test_training_lowers_the_answer_loss():
    """From ln(16) = 2.77 (uniform over the vocabulary) a model soon learns that answers are
    digits (ln 10 = 2.30 without reading the key): the first and last records must differ by
    more than the noise of 10 batches of 8 (about 0.1)."""
    _, history = pk.train_passkey(tiny_run(steps=60, batch=8, lr=1e-2, gate_lr=1e-2, record_every=10),
                                  progress=False)
    assert history["loss"][0] > 2.4 and history["loss"][-1] < history["loss"][0] - 0.2, history["loss"]


# ------------------------------------------------------------------ evaluation
def test_evaluation_of_an_oracle_is_perfect_across_segment_boundaries():
    # lengths that are not multiples of the segment, and depths that straddle boundaries
    oracle = Oracle(segment_length=8, n_digits=3)
    res = pk.evaluate_passkey(oracle, [20, 37, 64], depths=(0.0, 0.3, 0.5, 1.0), n_per_cell=5, n_digits=3,
                              progress=False)
    assert res["lengths"] == [20, 37, 64] and res["depths"] == [0.0, 0.3, 0.5, 1.0]
    for key in ("accuracy", "per_digit", "key_start", "straddles", "key_in_question_segment"):
        assert len(res[key]) == 3 and all(len(row) == 4 for row in res[key]), key
    assert res["accuracy"] == [[1.0] * 4] * 3 and res["per_digit"] == [[1.0] * 4] * 3
    wrong = pk.evaluate_passkey(Oracle(8, 3, wrong_last=True), [37], depths=(0.0, 1.0), n_per_cell=5, n_digits=3,
                                progress=False)
    assert wrong["accuracy"] == [[0.0, 0.0]]
    assert all(abs(v - 2 / 3) < 1e-6 for v in wrong["per_digit"][0])


def test_evaluation_reports_where_the_key_is():
    res = pk.evaluate_passkey(Oracle(32, 3), [128, 1024], n_per_cell=1, n_digits=3, progress=False)
    # key block KEY d1 d2 d3 starts at round(depth * (length - 8))
    assert res["key_start"] == [[0, 30, 60, 90, 120], [0, 254, 508, 762, 1016]]
    # at depth 0.25 the block (L/4 - 2 .. L/4 + 1) crosses the boundary at L/4
    assert res["straddles"] == [[False, True, False, False, False]] * 2
    assert res["key_in_question_segment"] == [[False, False, False, False, True]] * 2


def test_evaluation_cells_do_not_depend_on_what_else_is_asked():
    oracle = Oracle(8, 2, only_even=True)  # right on about half the sequences: the numbers depend on the data
    both = pk.evaluate_passkey(oracle, [24, 40], depths=(0.0, 1.0), n_per_cell=24, n_digits=2, seed=3, progress=False)
    one = pk.evaluate_passkey(oracle, [40], depths=(1.0,), n_per_cell=24, n_digits=2, seed=3, progress=False)
    assert one["accuracy"][0][0] == both["accuracy"][1][1]
    assert 0.0 < both["accuracy"][1][1] < 1.0
    other = pk.evaluate_passkey(oracle, [24, 40], depths=(0.0, 1.0), n_per_cell=24, n_digits=2, seed=4,
                                progress=False)
    assert other["accuracy"] != both["accuracy"]


def test_evaluation_matches_a_full_forward_pass():
    """Streaming segment by segment with only the last logits kept scores what a full forward
    pass scores with tasks.passkey_accuracy (same sequences, drawn the way a cell draws them)."""
    torch.manual_seed(0)
    model = pk.build_passkey_model(tiny_run(n_digits=1))  # 1 digit: an untrained model hits ~1/10
    res = pk.evaluate_passkey(model, [44], depths=(0.5,), n_per_cell=100, progress=False)
    gen = torch.Generator().manual_seed(pk._cell_seed(0, 44, 0.5))
    tokens, _ = passkey_batch(100, 44, n_digits=1, depth=0.5, generator=gen)
    with torch.no_grad():
        logits, _ = model(tokens)
    assert res["accuracy"][0][0] == passkey_accuracy(logits, tokens, 1)


def test_untrained_model_is_near_chance():
    torch.manual_seed(0)
    model = pk.build_passkey_model(tiny_run(n_digits=3))
    model.train()
    res = pk.evaluate_passkey(model, [24, 96], depths=(0.0, 1.0), n_per_cell=32, progress=False)
    assert res["n_digits"] == 3  # from model.passkey_run
    # chance is 1e-3 per passkey: 32 sequences with a hit is already 3 %
    assert max(max(row) for row in res["accuracy"]) <= 1 / 32
    assert model.training  # the mode is restored


# ----------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    model, history = pk.train_passkey(tiny_run(), progress=False)
    again, history2 = pk.load_passkey(pk.save_passkey(model, history, tmp_path / "x.pt", dtype=torch.float32))
    assert history2 == history and again.passkey_run == history["run"] and not again.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)
    half, _ = pk.load_passkey(pk.save_passkey(model, history, tmp_path / "h.pt"))  # float16 by default
    for k, v in model.state_dict().items():
        assert half.state_dict()[k].dtype == v.dtype
        torch.testing.assert_close(half.state_dict()[k], v, rtol=2**-10, atol=1e-7)


def test_load_or_train_trains_when_missing_and_keeps_a_stale_file(tmp_path, monkeypatch):
    monkeypatch.setitem(pk.PASSKEY_RUNS, "linear", tiny_run())
    with pytest.raises(FileNotFoundError, match="train_passkey.py"):
        pk.load_or_train_passkey("linear", checkpoint_dir=tmp_path, train_if_missing=False)
    with pytest.warns(UserWarning, match="no checkpoint"):
        pk.load_or_train_passkey("linear", checkpoint_dir=tmp_path, progress=False)
    path = tmp_path / "linear.pt"
    before = path.read_bytes()
    monkeypatch.setattr(pk, "train_passkey", lambda *a, **k: pytest.fail("trained although the checkpoint matches"))
    _, history = pk.load_or_train_passkey("linear", checkpoint_dir=tmp_path)
    assert history["run"] == tiny_run()
    monkeypatch.setitem(pk.PASSKEY_RUNS, "linear", tiny_run(steps=4))
    with pytest.raises(RuntimeError, match="another configuration.*train_passkey.py"):
        pk.load_or_train_passkey("linear", checkpoint_dir=tmp_path, train_if_missing=False)
    monkeypatch.undo()
    monkeypatch.setitem(pk.PASSKEY_RUNS, "linear", tiny_run(steps=4))
    with pytest.warns(UserWarning, match="another configuration"):
        _, history = pk.load_or_train_passkey("linear", checkpoint_dir=tmp_path, progress=False)
    assert history["step"][-1] == 4 and path.read_bytes() == before  # a stale file is not overwritten


# --------------------------------------------------- the shipped checkpoints
def _summary() -> dict:
    path = pk.CHECKPOINT_DIR / "histories.json"
    assert path.is_file(), f"missing {path}; regenerate with: {pk.REGENERATE_COMMAND}"
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", list(pk.PASSKEY_RUNS))
def test_shipped_checkpoint_matches_its_run_and_its_recorded_figures(name):
    path = pk.CHECKPOINT_DIR / f"{name}.pt"
    assert path.is_file(), f"missing {path}; regenerate with: {pk.REGENERATE_COMMAND}"
    assert path.stat().st_size < 1_000_000
    model, history = pk.load_or_train_passkey(name, train_if_missing=False)  # never trains
    run = pk.PASSKEY_RUNS[name]
    assert history["run"] == run and history["step"][-1] == run["steps"]
    assert len(history["gates"]) == len(history["step"]) and len(history["gates"][-1]) == run["n_layers"] * run["n_heads"]
    # The gates as stored (float16 beta, relative rounding 2**-11; sigmoid' <= 1/4) are those recorded.
    beta = torch.cat([p.detach() for p in model.gate_parameters()])
    tol = 0.25 * beta.abs().max().item() * 2**-11 + 1e-6
    assert (model.gates().flatten() - torch.tensor(history["gates"][-1])).abs().max() <= tol
    # Replay two cells of the stored evaluation (the same sequences: a cell's seed depends on the
    # seed, length and depth alone). The stored figures were measured on these float16 weights
    # too; a different summation order (threads, BLAS) can flip an argmax that was a near tie,
    # so one sequence in the 32 of a cell (1/32) may differ.
    recorded = _summary()["runs"][name]["evaluation"]
    assert recorded["lengths"][0] == run["train_length"] and recorded["depths"][0] == 0.0
    replay = pk.evaluate_passkey(model, [run["train_length"]], depths=(0.0, 0.5), n_per_cell=recorded["n_per_cell"],
                                 seed=recorded["seed"], progress=False)
    depth_half = recorded["depths"].index(0.5)
    assert abs(replay["accuracy"][0][0] - recorded["accuracy"][0][0]) <= 1 / 32 + 1e-9
    assert abs(replay["accuracy"][0][1] - recorded["accuracy"][0][depth_half]) <= 1 / 32 + 1e-9
    # Learned to read the memory: at depth 0 the key is three segments before the question's,
    # beyond local attention's reach; chance is 1e-3 per passkey.
    assert replay["accuracy"][0][0] > 0.5


def test_shipped_gate_lr_small_gates_stay_within_adams_bound():
    """Adam's step on a parameter is at most lr * (1 - b1) / sqrt(1 - b2) ~ 3.2 lr (b1 0.9, b2
    0.999), so beta can move at most 3.2 * sum of the scheduled rates: the gates of
    gate-lr-small cannot leave 0.5 by more than a quarter of that."""
    history = _summary()["runs"]["gate-lr-small"]
    run = history["run"]
    budget = 3.2 * sum(run["gate_lr"] * pk._lr_factor(s, run["steps"], run["warmup"])
                       for s in range(1, run["steps"] + 1))
    assert max(abs(g - 0.5) for g in history["gates"][-1]) <= 0.25 * budget + 1e-6


# ------------------------------------------------------------------ bad input
BAD = [
    (lambda: pk.build_passkey_model("linear-2"), ValueError, r"\brun\b"),
    (lambda: pk.build_passkey_model([1]), TypeError, r"\brun\b"),
    (lambda: pk.build_passkey_model({"rule": "linear"}), ValueError, r"\brun\b.*missing"),
    (lambda: pk.build_passkey_model(tiny_run(rule="hebbian")), ValueError, r"rule"),
    (lambda: pk.build_passkey_model(tiny_run(segment_length=0)), ValueError, r"segment_length"),
    (lambda: pk.build_passkey_model(tiny_run(train_length=4)), ValueError, r"train_length"),
    (lambda: pk.build_passkey_model(tiny_run(gate_lr=0.0)), ValueError, r"gate_lr"),
    (lambda: pk.train_passkey(tiny_run(), steps=0), ValueError, r"\bsteps\b"),
    (lambda: pk.train_passkey(tiny_run(), progress="no"), TypeError, r"progress"),
    (lambda: pk.train_passkey(tiny_run(), device="tpu"), ValueError, r"device"),
    (lambda: pk.train_passkey(tiny_run(batch=0)), ValueError, r"batch"),
    (lambda: pk.passkey_optimizer(nn.Linear(2, 2), "linear"), TypeError, r"\bmodel\b"),
    (lambda: pk.evaluate_passkey("model", [128]), TypeError, r"\bmodel\b"),
    (lambda: pk.evaluate_passkey(pk.build_passkey_model("linear"), []), ValueError, r"lengths"),
    (lambda: pk.evaluate_passkey(pk.build_passkey_model("linear"), 128), ValueError, r"lengths"),
    (lambda: pk.evaluate_passkey(pk.build_passkey_model("linear"), [6]), ValueError, r"lengths"),
    (lambda: pk.evaluate_passkey(pk.build_passkey_model("linear"), [128], depths=(1.5,)), ValueError, r"depths"),
    (lambda: pk.evaluate_passkey(pk.build_passkey_model("linear"), [128], n_per_cell=0), ValueError, r"n_per_cell"),
    (lambda: pk.evaluate_passkey(pk.build_passkey_model("linear"), [128], n_digits=0), ValueError, r"n_digits"),
    (lambda: pk.evaluate_passkey(InfiniTransformer(PASSKEY_VOCAB, 8, 2, 16, 1), [128]), ValueError, r"n_digits"),
    (lambda: pk.evaluate_passkey(pk.build_passkey_model("linear"), [128], seed=-1), ValueError, r"\bseed\b"),
    (lambda: pk.evaluate_passkey(pk.build_passkey_model("linear"), [128], progress=1), TypeError, r"progress"),
    (lambda: pk.save_passkey("model", {}, "x.pt"), TypeError, r"\bmodel\b"),
    (lambda: pk.save_passkey(pk.build_passkey_model("linear"), {}, "x.pt"), TypeError, r"\bhistory\b"),
    (lambda: pk.save_passkey(pk.build_passkey_model("linear"), {"run": pk.PASSKEY_RUNS["linear"]}, 3), TypeError,
     r"\bpath\b"),
    (lambda: pk.load_passkey(3), TypeError, r"\bpath\b"),
    (lambda: pk.load_passkey("/nonexistent/linear.pt"), FileNotFoundError, r"train_passkey\.py"),
    (lambda: pk.load_or_train_passkey("linear-2"), ValueError, r"\brun\b"),
    (lambda: pk.load_or_train_passkey(pk.PASSKEY_RUNS["linear"]), TypeError, r"\brun\b"),
    (lambda: pk.load_or_train_passkey("linear", train_if_missing="no"), TypeError, r"train_if_missing"),
    (lambda: pk.load_or_train_passkey("linear", checkpoint_dir=3), TypeError, r"checkpoint_dir"),
]


@pytest.mark.parametrize("call, error, pattern", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_raises_an_error_naming_the_parameter(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()

