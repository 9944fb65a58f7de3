"""Tests of longctx_lib.bench, chapter 7's harness.

The models: parameter counts matched, naive and fused attention the same function, causality
by perturbation, the streamed loss equal to the whole one, the Reformer equal to the LSH model
whose weights it shares. The tasks: exact lengths, answers where the prompts say. The harness:
a real sweep that stops a method at the budget, load-else-train, result files, comparisons,
plots and the command line. Every tolerance is float64 rounding unless stated.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from dataclasses import replace

import pytest
import torch

from longctx_lib import bench
from longctx_lib.tasks import ASK_TOKEN, KEY_TOKEN, QUERY_TOKEN, SEP_TOKEN, TASK_VOCAB

TINY = bench.ModelSizes(d_model=16, n_heads=2, n_layers=1, d_ff=32, segment_length=8, n_memory=2,
                        chunk_size=8, n_hashes=1, max_length=256)


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TASK_VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ models
@pytest.mark.parametrize("sizes", [bench.ModelSizes(), bench.SpeedConfig().sizes], ids=["quality", "speed"])
def test_matched_sizes_give_every_method_the_full_attention_parameter_count(sizes):
    target = bench.n_parameters(bench.build_model("sdpa", sizes))
    for method in bench.METHODS:
        n = bench.n_parameters(bench.build_model(method, bench.matched_sizes(method, sizes)))
        # d_ff moves the count in steps of (2 d_model + 1) per layer (more for the Reformer's halves)
        assert abs(n / target - 1) < 0.005, f"{method}: {n} parameters against {target}"


def test_naive_and_sdpa_models_compute_the_same_function_in_float64():
    torch.manual_seed(0)
    naive = bench.build_model("naive", TINY).double()
    sdpa = bench.build_model("sdpa", TINY).double()
    sdpa.load_state_dict(naive.state_dict())
    x = tokens(2, 40)
    torch.testing.assert_close(naive(x), sdpa(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["naive", "sdpa", "infini", "rmt"])
def test_exact_and_memory_models_are_causal(method):
    """Changing token t changes no logit before t. (Not tested for LSH: a token's key moves the
    chunk boundaries of the sorted sequence, so it changes which earlier keys an earlier query
    sees; chapter 2 measures this and tests LSH's causality by perturbing values.)"""
    torch.manual_seed(0)
    model = bench.build_model(method, TINY).double().eval()
    x = tokens(1, 48)
    y = x.clone()
    y[0, 30] = (y[0, 30] + 1) % TASK_VOCAB
    torch.manual_seed(1)
    a = bench.lm_logits(model, x)
    torch.manual_seed(1)
    b = bench.lm_logits(model, y)
    assert a.shape == (1, 48, TASK_VOCAB)
    torch.testing.assert_close(a[:, :30], b[:, :30], rtol=0, atol=1e-12)
    assert (a[:, 30] - b[:, 30]).abs().max() > 1e-6, "the changed token must change its own prediction"


@pytest.mark.parametrize("method", ["infini", "rmt"])
def test_streamed_loss_equals_the_whole_sequence_loss(method):
    torch.manual_seed(0)
    model = bench.build_model(method, TINY).double()
    x = tokens(2, 37)  # segments of 8 and a short last one
    whole = bench.lm_loss(model, x)
    with torch.no_grad():
        streamed = bench.lm_loss(model, x, streamed=True)
    torch.testing.assert_close(streamed, whole.detach(), rtol=1e-12, atol=1e-12)


def test_the_reformer_computes_the_lsh_models_function():
    """Reversible layers and chunking change what is stored, not the function (chapters 3 and 4)."""
    torch.manual_seed(0)
    lsh = bench.build_model("lsh", TINY).double()
    reformer = bench.build_model("reformer", TINY).double()
    reformer.load_state_dict(lsh.state_dict())
    x = tokens(2, 64)
    torch.manual_seed(3)
    a = bench.lm_loss(lsh, x)
    torch.manual_seed(3)
    b = bench.lm_loss(reformer, x)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", bench.METHODS)
@pytest.mark.parametrize("mode", bench.MODES)
def test_speed_step_runs_every_method_and_mode(method, mode):
    out = bench.speed_step(method, 40, mode=mode, sizes=TINY, repeats=2)
    assert out["seconds"] > 0 and 0 < out["loss"] < 10


def test_speed_step_forward_of_segmented_methods_is_the_loss_of_their_whole_forward():
    out = bench.speed_step("rmt", 40, mode="forward", sizes=TINY, seed=5)
    back = bench.speed_step("rmt", 40, mode="forward+backward", sizes=TINY, seed=5)
    assert out["loss"] == pytest.approx(back["loss"], rel=1e-5)


# ------------------------------------------------------------------------------ the sweep
def test_measure_speed_stops_a_method_at_the_budget_and_keeps_the_others_going():
    """A real sweep (a child process per point): with 24 MiB, naive attention's 16 MiB score
    matrix (4 heads x 1024^2 x 4 bytes) plus the activations passes the budget at 1024 tokens,
    while RMT reads 1024 tokens in a few MiB. Measured here: naive 38 MiB, RMT 6 MiB."""
    config = bench.SpeedConfig(methods=("naive", "rmt"), modes=("forward",), start=256, stop=1024, budget_mib=24.0)
    rows = bench.measure_speed(config, device="cpu", progress=False)
    by = {(r["method"], r["length"]): r for r in rows}
    assert [r["status"] for r in rows if r["method"] == "rmt"] == ["ok", "ok", "ok"]
    assert by[("naive", 1024)]["status"] == "over_budget"
    assert by[("naive", 1024)]["peak_bytes"] > 24 * 2**20 > by[("rmt", 1024)]["peak_bytes"]
    assert bench.longest_fitting(rows) == {"naive": {"forward": 512}, "rmt": {"forward": 1024}}


def test_a_failure_that_is_not_for_want_of_memory_or_time_is_raised():
    assert bench._failure(TimeoutError("slow")) == "timeout"
    assert bench._failure(RuntimeError("... (killed by signal 9: most likely ...)")) == "oom"
    assert bench._failure(RuntimeError("CUDA out of memory. Tried to allocate")) == "oom"
    assert bench._failure(RuntimeError("shape mismatch")) is None


def test_longest_fitting_ignores_rows_that_did_not_fit():
    rows = [{"method": "a", "mode": "forward", "length": n, "status": s}
            for n, s in ((1, "ok"), (2, "ok"), (4, "oom"))]
    rows.append({"method": "b", "mode": "forward", "length": 1, "status": "timeout"})
    assert bench.longest_fitting(rows) == {"a": {"forward": 2}, "b": {"forward": None}}


# ------------------------------------------------------------------------------ tasks
@pytest.mark.parametrize("length", [36, 37, 128, 1000])
@pytest.mark.parametrize("task", bench.TASKS)
def test_task_batches_have_the_asked_length_and_their_answers_at_the_end(task, length):
    x, mask = bench.task_batch(task, 5, length, generator=torch.Generator().manual_seed(length))
    assert x.shape == mask.shape == (5, length) and x.dtype == torch.int64 and mask.dtype == torch.bool
    assert 0 <= int(x.min()) and int(x.max()) < TASK_VOCAB
    n = int(mask[0].sum())
    assert (mask.sum(1) == n).all() and mask[:, length - n:].all(), "answers are the last tokens"
    if task == "passkey":
        assert n == bench.PASSKEY_DIGITS and (x[:, length - n - 1] == QUERY_TOKEN).all()
        for row in x:
            key = int((row == KEY_TOKEN).nonzero()[0])
            assert torch.equal(row[key + 1:key + 1 + n], row[length - n:])
    elif task == "associative":
        assert n == 1 and (x[:, -3] == ASK_TOKEN).all()
        for row in x:
            keys, values = row[:2 * bench.N_PAIRS:2], row[1:2 * bench.N_PAIRS:2]
            assert len(set(keys.tolist())) == bench.N_PAIRS
            assert int(values[int((keys == row[-2]).nonzero()[0])]) == int(row[-1])
    else:
        half = (length - 1) // 2
        assert n == half and (x[:, length - half - 1] == SEP_TOKEN).all()
        assert torch.equal(x[:, length - 2 * half - 1:length - half - 1], x[:, length - half:])


def test_task_batches_are_reproducible_from_the_generator():
    a = bench.task_batch("associative", 3, 64, generator=torch.Generator().manual_seed(1))
    b = bench.task_batch("associative", 3, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_answer_logits_are_the_predictions_made_one_position_before_each_answer():
    torch.manual_seed(0)
    model = bench.build_model("sdpa", TINY)
    x, mask = bench.task_batch("copy", 2, 21, generator=torch.Generator().manual_seed(0))
    logits, targets = bench.answer_logits(model, x, mask)
    full = model(x)
    assert logits.shape == (20, TASK_VOCAB) and torch.equal(targets, x[:, 11:].flatten())
    torch.testing.assert_close(logits, full[:, 10:20].flatten(0, 1))


# ------------------------------------------------------------------------------ quality
def test_training_learns_and_evaluation_is_repeatable():
    """Associative retrieval at 32 tokens: in 150 steps the tiny full-attention model learns at
    least that the answer is one of the 16 symbols: its loss falls from about the uniform guess
    over 32 tokens (ln 32 = 3.47) to near ln 16 = 2.77. (Retrieval itself takes the shipped
    models' 1,500 steps; the book measures it.)"""
    config = bench.QualityConfig(sizes=TINY, train_length=32, eval_multiples=(1, 2), steps=150, batch=16,
                                 warmup=10, eval_sequences=16, lr=3e-3)
    model, history = bench.train_quality("sdpa", "associative", config, progress=False)
    assert history["loss"][0] > 3.0 and history["loss"][-1] < 2.95
    assert history["n_parameters"] == bench.n_parameters(model)
    first = bench.evaluate_quality(model, "associative", [32, 64], n_sequences=16, batch=8)
    assert first == bench.evaluate_quality(model, "associative", [32, 64], n_sequences=16, batch=8)
    assert set(first) == {32, 64} and all(0 <= v <= 1 for v in first.values())


def test_load_or_train_trains_once_then_loads_and_retrains_on_another_config(tmp_path):
    config = bench.QualityConfig(sizes=TINY, train_length=32, eval_multiples=(1,), steps=2, batch=2, warmup=0)
    with pytest.warns(UserWarning, match="training from scratch"):
        trained, _ = bench.load_or_train_quality("rmt", "copy", config, progress=False, directory=tmp_path)
    assert (tmp_path / "copy-rmt.pt").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, history = bench.load_or_train_quality("rmt", "copy", config, progress=False, directory=tmp_path)
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a.to(torch.bfloat16).float(), b, msg=name)  # stored as bfloat16
    assert history["n_parameters"] == bench.n_parameters(loaded)
    with pytest.warns(UserWarning, match="another configuration"):
        bench.load_or_train_quality("rmt", "copy", replace(config, steps=3), progress=False, directory=tmp_path)


def test_the_shipped_quality_models_match_the_default_configuration():
    """The book and assignment 7 load these; were one stale, they would train for minutes."""
    config = bench.QualityConfig()
    for task in config.tasks:
        for method in config.methods:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                model, history = bench.load_or_train_quality(method, task, config, progress=False)
            assert history["n_parameters"] == bench.n_parameters(model)
            assert len(history["loss"]) == config.steps // 50


# ------------------------------------------------------------------------------ results
def fake_results(scale: float = 1.0, accuracy: float = 0.5) -> dict:
    speed = [{"method": m, "mode": mode, "length": n, "status": "ok", "seconds": scale * n / 1000,
              "peak_bytes": int(scale * n * 1000), "loss": 3.0}
             for m in ("sdpa", "infini") for mode in bench.MODES for n in (1024, 2048)]
    speed.append({"method": "sdpa", "mode": "forward", "length": 4096, "status": "oom", "seconds": None,
                  "peak_bytes": None, "loss": None})
    quality = [{"task": t, "method": m, "length": 128 * k, "multiple": k, "accuracy": accuracy,
                "n_parameters": 100, "train_seconds": 1.0} for t in bench.TASKS for m in ("sdpa", "infini")
               for k in (1, 2)]
    return {"version": 1, "machine": {"device": f"test x{scale}"}, "speed": speed, "quality": quality,
            "speed_config": {"budget_mib": 8.0}, "quality_config": {"train_length": 128}}


def test_compare_results_gives_ratios_b_over_a():
    comparison = bench.compare_results(fake_results(), fake_results(scale=2.0, accuracy=0.75))
    assert len(comparison["speed"]) == 8
    assert all(r["time_ratio"] == pytest.approx(2.0) and r["memory_ratio"] == pytest.approx(2.0)
               for r in comparison["speed"])
    assert all(r["difference"] == pytest.approx(0.25) for r in comparison["quality"])
    assert {"method": "sdpa", "mode": "forward", "a": 2048, "b": 2048} in comparison["longest"]
    text = bench.format_comparison(comparison)
    assert "test x1.0" in text and "test x2.0" in text and "2.00" in text and "+0.25" in text


def test_results_round_trip_table_and_plot(tmp_path):
    results = fake_results()
    path = bench.save_results(results, tmp_path / "r" / "results.json")
    assert bench.load_results(path) == json.loads(json.dumps(results))
    table = {r["method"]: r for r in bench.results_table(results)}
    assert table["sdpa"]["forward"]["longest"] == 2048 and table["infini"]["passkey"]["beyond"] == 0.5
    fig = bench.plot_results(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert len(fig.axes) == 7 and "test x1.0" in fig._suptitle.get_text()
    assert all(ax.get_xlabel() and ax.get_ylabel() and ax.get_title() for ax in fig.axes)


def test_load_results_refuses_other_json(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a results file"):
        bench.load_results(tmp_path / "x.json")


def test_machine_description_names_the_device_and_software():
    info = bench.machine_description("cpu")
    assert info["device_type"] == "cpu" and info["torch"] == torch.__version__ and info["cores"] >= 1
    assert "CPU" in info["device"] and info["memory_bytes"] > 2**28


def test_command_line_compares_and_plots(tmp_path, capsys):
    a, b = (bench.save_results(fake_results(s), tmp_path / f"{s}.json") for s in (1.0, 3.0))
    assert bench.main(["compare", str(a), str(b)]) == 0
    assert "3.00" in capsys.readouterr().out
    assert bench.main(["plot", str(a), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").is_file()


def test_command_line_runs_the_harness_end_to_end(tmp_path):
    """The smoke profile for one method: the speed sweep (fresh processes), the shipped quality
    models evaluated, the JSON with the machine and the figure."""
    out = tmp_path / "run.json"
    done = subprocess.run([sys.executable, "-m", "longctx_lib.bench", "run", "--profile", "smoke", "--device", "cpu",
                           "--methods", "rmt", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = bench.load_results(out)
    assert results["machine"]["device_type"] == "cpu" and results["profile"] == "smoke"
    assert {(r["mode"], r["length"], r["status"]) for r in results["speed"]} == {
        (mode, n, "ok") for mode in bench.MODES for n in (1024, 2048, 4096)}
    assert {(r["task"], r["method"]) for r in results["quality"]} == {(t, "rmt") for t in bench.TASKS}
    assert results["longest"] == {"rmt": {"forward": 4096, "forward+backward": 4096}}
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert '"method": "rmt"' in done.stdout  # the summary table


def test_profiles_build_valid_configs():
    for name, profile in bench.PROFILES.items():
        speed = bench.SpeedConfig(**copy.deepcopy(profile["speed"]))
        quality = bench.QualityConfig(**copy.deepcopy(profile["quality"]))
        assert speed.start <= speed.stop and quality.train_length == 128, name
