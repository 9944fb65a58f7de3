"""Assignment 7 (the capstone: a method for a budget): its grader suites, and nbgrader grading it.

Two parts, as for assignment 6 (``tests/test_grading_06.py``):

* The chapter-7 suites of ``longctx_lib.grading`` without nbgrader: right answers written from
  the prompts pass; each wrong answer fails exactly the suites that can see its mistake; the
  grader's own pieces agree with the library (its longest length with ``bench.longest_fitting``
  on sweeps as the harness writes them, its slope with ``measure.fit_loglog_slope``, its windowed
  accuracy with the whole window with ``bench.evaluate_quality`` on the same sequences, the peak it
  measures with the workload the prompt names); the project is decided with the shipped models read
  when the cases were drawn, so rewriting ``checkpoints/bench/`` afterwards changes nothing; the
  library is blocked and its use is found by the static scan; hand-made results fail without
  crashing the grader.
* The assignment graded by nbgrader, as a student's work would be:

  1. Regenerating the student notebook reproduces the committed ``notebooks/`` exactly.
  2. The solution notebook, submitted as a student's, earns every autograded point.
  3. The untouched student notebook earns none.
  4. Wrong submissions earn partial marks: exactly the points of the test cells that can
     detect their mistake (a project choice that misses the budget loses its 2 budget points and
     keeps the 2 baseline points, and the other way round).
  5. Tampering from inside the notebook earns nothing: patching the kernel's reference or the
     kernel's project measurements fools only the kernel's own comparison, and silencing the
     checks hands the grader no results.
  6. Grading leaves the submitted file byte for byte as it was.

The project's numbers (``grading.CAPSTONE_SCENARIO``, measured with the shipped checkpoints on a
2-core CPU): the baseline (sdpa on the last 128 of 1,024 tokens) answers 0.125 of the 512
passkeys, so a choice needs 0.225; Infini-attention on the last 512 tokens answers 0.258 with a
peak of about 0.7 MiB (the solution), on the whole sequence 0.174; LSH on the last 512 answers
0.303 but needs 3-4.5 MiB; sdpa on the whole sequence answers 0.047 and needs 4.5-6.4 MiB; the
budget is 2 MiB. The choices below are far from both thresholds.

One temporary course per module (generate_assignment once); each submission is autograded
once and shared by the tests that read its scores.
"""

from __future__ import annotations

import functools
import math
import random
import statistics

import nbformat
import pytest
import torch
from grading_helpers import (
    Course,
    answer_cells,
    assert_student_matches_generated,
    cached_grader,
    check_assignment_layout,
    grade_suite,
    printed_output,
    well_formed_grades,
)
from nbhelpers import REPO

from longctx_lib import bench, grading, measure, tasks

# nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every autograde.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

ASSIGNMENT = "07-capstone"
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
STUDENT = REPO / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
AUTOGRADED_POINTS = 10

SUITES = {"capstone_longest_small": "longest", "capstone_longest": "longest",
          "capstone_exponent_small": "exponent", "capstone_exponent": "exponent",
          "capstone_window_small": "window", "capstone_window": "window",
          "capstone_budget": "choice", "capstone_baseline": "choice"}
SOLUTION_CHOICE = {"method": "infini", "window": 512}


# ============================================================ the suites, without nbgrader
# A student's answers, written here from the assignment's prompts (not the grader's code), with the
# mistakes the tests below make. They take other routes than the notebook's solution where the
# prompts allow one (statistics.linear_regression for the slope, the first answer position from
# nonzero(), one forward pass over every sequence).
def _longest(rows, budget_bytes, mistake=None):
    by_pair = {}
    for r in rows:
        by_pair.setdefault((r["method"], r["mode"]), []).append(r)
    out = {}
    for pair, pair_rows in by_pair.items():
        ordered = pair_rows if mistake == "unsorted" else sorted(pair_rows, key=lambda r: r["length"])
        best = None
        for r in ordered:
            if mistake == "ignores_status":
                good = r["peak_bytes"] is not None and r["peak_bytes"] <= budget_bytes
            elif mistake == "strict":
                good = r["status"] == "ok" and r["peak_bytes"] < budget_bytes
            else:
                good = r["status"] == "ok" and r["peak_bytes"] <= budget_bytes
            if mistake == "skips_noise":  # the longest row that fits, as if the sweep went on
                if good and (best is None or r["length"] > best):
                    best = r["length"]
                continue
            if not good:
                break
            best = r["length"]
        if not (mistake == "drops_none" and best is None):
            out[pair] = best
    if mistake == "string_keys":
        return {f"{m} {mode}": v for (m, mode), v in out.items()}
    return out


def _exponent(rows, method, mode, mistake=None):
    keep = ("ok", "over_budget") if mistake == "includes_over_budget" else ("ok",)
    ok = sorted((r for r in rows if r["method"] == method and r["mode"] == mode and r["status"] in keep),
                key=lambda r: r["length"])
    if len(ok) < 2:
        if mistake == "no_error":
            return float("nan")
        raise ValueError("not enough rows" if mistake == "vague_error" else
                         f"{method} {mode}: need two 'ok' rows, got {len(ok)}")
    if mistake == "two_ends":
        return math.log(ok[-1]["peak_bytes"] / ok[0]["peak_bytes"]) / math.log(ok[-1]["length"] / ok[0]["length"])
    xs, ys = [math.log(r["length"]) for r in ok], [math.log(r["peak_bytes"]) for r in ok]
    if mistake == "float32":  # a torch fit in float32: not a mistake the tolerance punishes
        x, y = torch.tensor(xs, dtype=torch.float32), torch.tensor(ys, dtype=torch.float32)
        x = x - x.mean()
        return float((x * (y - y.mean())).sum() / (x * x).sum())
    return statistics.linear_regression(xs, ys).slope


def _windowed(model, task, length, window, n_sequences, seed, mistake=None):
    gen = torch.Generator().manual_seed(seed)
    if mistake == "batches":  # the sequences drawn 32 at a time: other sequences
        parts = [bench.task_batch(task, min(32, n_sequences - a), length, generator=gen)
                 for a in range(0, n_sequences, 32)]
        tokens, mask = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    else:
        tokens, mask = bench.task_batch(task, n_sequences, length, generator=gen)
    first = int(mask[0].nonzero()[0])
    least = length - first + (0 if mistake == "lenient" else 1)
    if mistake != "no_check" and not least <= window <= length:
        raise ValueError(f"window={window} must lie in [{least}, {length}]")
    w = min(length, window + 1) if mistake == "off_by_one" else window
    if mistake == "off_by_one_on_copy":
        w = min(length, window + 1) if task == "copy" else window
    x, m = tokens[:, -w:], mask[:, -w:]
    dev = next(model.parameters()).device
    with torch.no_grad():
        logits = bench.lm_logits(model, (tokens if mistake == "whole" else x).to(dev)).cpu()[:, -w:]
    if mistake == "no_shift":
        return ((logits.argmax(-1) == x) | ~m).all(1).double().mean().item()
    pred, target = logits[:, :-1].argmax(-1), x[:, 1:]
    scored = m[:, :-1] if mistake == "mask_left" else m[:, 1:]
    if mistake == "per_token":
        return ((pred == target) & scored).sum().item() / scored.sum().item()
    right = ((pred == target) | ~scored).all(dim=1)
    if mistake == "tensor":  # a 0-d tensor instead of a float: accepted
        return right.double().mean()
    return right.sum().item() / n_sequences


_CHOICES = {None: SOLUTION_CHOICE, "misses_budget": {"method": "lsh", "window": 512},
            "misses_baseline": {"method": "infini", "window": None},
            "the_baseline": {"method": "sdpa", "window": 128},
            "misses_both": {"method": "sdpa", "window": None},
            "unknown_method": {"method": "mamba", "window": None},
            "window_too_narrow": {"method": "infini", "window": 3},
            "window_a_float": {"method": "infini", "window": 512.0},
            "a_tuple": ("infini", 512)}


def _choice(mistake=None):
    return lambda: _CHOICES[mistake]


_ANSWERS = {"longest": _longest, "exponent": _exponent, "window": _windowed}


def _wrong(kind, mistake):
    if kind == "choice":
        return _choice(mistake)
    return functools.partial(_ANSWERS[kind], mistake=mistake)


@pytest.mark.parametrize("suite", list(SUITES))
def test_right_answers_pass(tmp_path, monkeypatch, suite):
    assert grade_suite(tmp_path, monkeypatch, suite, _wrong(SUITES[suite], None)) == []


@pytest.mark.parametrize("kind, mistake", [("exponent", "float32"), ("window", "tensor")])
def test_other_right_answers_pass(tmp_path, monkeypatch, kind, mistake):
    """A slope fitted in float32 and an accuracy returned as a 0-d tensor are accepted."""
    for suite in (s for s, k in SUITES.items() if k == kind):
        assert grade_suite(tmp_path, monkeypatch, suite, _wrong(kind, mistake)) == [], suite


_SMALL_AND_HIDDEN = {"longest": ("capstone_longest_small", "capstone_longest"),
                     "exponent": ("capstone_exponent_small", "capstone_exponent"),
                     "window": ("capstone_window_small", "capstone_window")}


def _both(kind, words, small_words=None):
    small, hidden = _SMALL_AND_HIDDEN[kind]
    return {small: small_words or words, hidden: words}


# (answer, mistake) -> {suite: words in the grader's report}; every other suite of that exercise passes.
WRONG_ANSWERS = {
    # the sweep in the order given: the hand table is sorted, random tables are not
    ("longest", "unsorted"): {"capstone_longest": "expected"},
    ("longest", "ignores_status"): _both("longest", "expected"),
    ("longest", "strict"): _both("longest", "expected"),
    ("longest", "skips_noise"): _both("longest", "expected", small_words="('rmt', 'forward+backward'): 4096"),
    ("longest", "drops_none"): _both("longest", "no entry for"),
    ("longest", "string_keys"): _both("longest", "the keys must be (method, mode) tuples"),
    ("exponent", "includes_over_budget"): _both("exponent", "expected"),
    ("exponent", "no_error"): _both("exponent", "expected a ValueError"),
    ("exponent", "vague_error"): _both("exponent", "does not name"),
    ("exponent", "two_ends"): _both("exponent", "exponent"),
    # the sequences drawn 32 at a time: the same as one call for at most 32 (the small cases)
    ("window", "batches"): {"capstone_window": "accuracy"},
    ("window", "lenient"): _both("window", "expected a ValueError (window)"),
    ("window", "no_check"): _both("window", "expected a ValueError (window)"),
    ("window", "off_by_one"): _both("window", "accuracy"),
    ("window", "whole"): _both("window", "accuracy"),
    ("window", "no_shift"): _both("window", "accuracy"),
    ("window", "mask_left"): _both("window", "accuracy"),
    ("window", "per_token"): _both("window", "accuracy"),
    # a mistake only the hidden cases can see (the small ones read copy whole): what tampering exploits below
    ("window", "off_by_one_on_copy"): {"capstone_window": "task='copy'"},
    ("choice", "misses_budget"): {"capstone_budget": "> the budget"},
    ("choice", "misses_baseline"): {"capstone_baseline": "+ the margin"},
    ("choice", "the_baseline"): {"capstone_baseline": "+ the margin"},
    ("choice", "misses_both"): {"capstone_budget": "> the budget", "capstone_baseline": "+ the margin"},
    ("choice", "unknown_method"): {s: "must be one of" for s in ("capstone_budget", "capstone_baseline")},
    ("choice", "window_too_narrow"): {s: "an int from 4" for s in ("capstone_budget", "capstone_baseline")},
    ("choice", "window_a_float"): {s: "None or an int" for s in ("capstone_budget", "capstone_baseline")},
    ("choice", "a_tuple"): {s: "must be a dict" for s in ("capstone_budget", "capstone_baseline")},
}


@pytest.mark.parametrize("kind, mistake", list(WRONG_ANSWERS))
def test_wrong_answers_fail_exactly_the_suites_that_can_see_them(tmp_path, monkeypatch, kind, mistake):
    expected = WRONG_ANSWERS[(kind, mistake)]
    for suite in (s for s, k in SUITES.items() if k == kind):
        problems = grade_suite(tmp_path, monkeypatch, suite, _wrong(kind, mistake))
        if suite in expected:
            assert problems and "checked by the grader" in problems[0] and expected[suite] in problems[0], (
                suite, problems)
        else:
            assert problems == [], (suite, problems)


def test_project_failures_report_both_numbers(tmp_path, monkeypatch):
    """The budget: the choice's peak and the budget; the baseline: both accuracies and the margin."""
    problems = grade_suite(tmp_path, monkeypatch, "capstone_budget", _choice("misses_both"))
    assert problems and "sdpa reading all 1024 tokens: peak memory" in problems[0] and "MiB > the budget" in \
        problems[0], problems
    problems = grade_suite(tmp_path, monkeypatch, "capstone_baseline", _choice("misses_baseline"))
    assert problems and "infini reading all 1024 tokens: accuracy 0.174" in problems[0], problems
    assert "< the baseline's 0.125 (sdpa reading the last 128 tokens) + the margin 0.1 = 0.225" in problems[0], problems


def test_a_model_that_cannot_read_the_length_is_a_failure_not_a_crash(tmp_path, monkeypatch):
    """The shipped LSH model reads at most 1,024 tokens: a longer scenario names that limit."""
    monkeypatch.setitem(grading.CAPSTONE_SCENARIO, "length", 2048)
    for suite, words in (("capstone_budget", "reads at most max_length=1024"), ("capstone_baseline", "cannot read")):
        problems = grade_suite(tmp_path, monkeypatch, suite, lambda: {"method": "lsh", "window": None})
        assert problems and words in problems[0], problems


# ----------------------------------------------------------------- the grader's pieces vs the library
def _cases(*names):
    return [c for name in names for c in grading.SUITES[name].cases(grading.SUITES[name].seed)]


def test_longest_within_is_longest_fitting_on_harness_sweeps():
    """On sweeps as measure_speed writes them (sorted, stopped at the first failure), with a budget that
    nothing passes, the grader's longest length is bench.longest_fitting's."""
    rng = random.Random(0)
    for _ in range(50):
        rows = []
        for method, mode in grading._pairs(rng, rng.randint(1, 5)):
            rows += grading._random_sweep(rng, method, mode, start=rng.choice([256, 1024]), n=rng.randint(1, 6),
                                          exponent=rng.uniform(0, 2), base=rng.uniform(1, 50) * 2**20,
                                          ending=rng.choice(["ok", "over_budget", "oom", "timeout"]), noise=0.2)
        ours = grading._ref_longest_within(rows, math.inf)
        theirs = bench.longest_fitting(rows)
        assert ours == {(m, mode): v for m, modes in theirs.items() for mode, v in modes.items()}


def test_memory_exponent_is_fit_loglog_slope():
    for c in _cases("capstone_exponent_small", "capstone_exponent"):
        ok = [r for r in c["rows"] if (r["method"], r["mode"]) == (c["method"], c["mode"]) and r["status"] == "ok"]
        if len(ok) < 2:
            with pytest.raises(ValueError):
                grading._ref_memory_exponent(c["rows"], c["method"], c["mode"])
            continue
        want = measure.fit_loglog_slope([r["length"] for r in ok], [r["peak_bytes"] for r in ok])
        assert abs(grading._ref_memory_exponent(c["rows"], c["method"], c["mode"]) - want) < 1e-9


def test_windowed_accuracy_with_the_whole_window_is_evaluate_quality():
    """With window == length the grader's reference is bench.evaluate_quality on the same sequences
    (evaluate_quality seeds its generator with seed + length; batch = n_sequences draws them in one
    call): on the grader's random models, its test models and the shipped models."""
    checked = 0
    for c in _cases("capstone_window_small", "capstone_window"):
        if c["window"] != c["length"]:
            continue
        model = grading._case_lm(c["model"])
        with grading._torch_sdpa_allowed():
            want = bench.evaluate_quality(model, c["task"], [c["length"]], n_sequences=c["n_sequences"],
                                          batch=c["n_sequences"], seed=c["seed"] - c["length"])[c["length"]]
        got = grading._ref_windowed_accuracy(model, c["task"], c["length"], c["length"], c["n_sequences"], c["seed"])
        assert got == want, grading._window_describe(c)
        checked += 1
    assert checked >= 8
    for method in ("sdpa", "infini", "rmt"):  # float32: the same batches of 32 on both sides
        model = grading._scenario_model("passkey", method)
        want = bench.evaluate_quality(model, "passkey", [256], n_sequences=32, batch=32, seed=9)[256]
        assert grading._ref_windowed_accuracy(model, "passkey", 256, 256, 32, 9 + 256, batch=32) == want, method


def test_scenario_accuracy_is_the_reference_on_the_scenario_sequences():
    """What the project's baseline suite computes is exercise 3's reference on the scenario's sequences."""
    scenario = grading._capstone_cases(0)[0]
    base = scenario["baseline"]
    model = grading._scenario_model(scenario["task"], base["method"])
    want = grading._ref_windowed_accuracy(model, scenario["task"], scenario["length"], base["window"],
                                          scenario["n_sequences"], scenario["seed"], batch=32)
    assert grading._baseline_reference(scenario) == want
    # the truncation baseline answers the passkeys in its window: about window / length of them
    assert abs(want - base["window"] / scenario["length"]) < 0.05, want


def test_project_budget_measures_the_prompts_workload(monkeypatch):
    """The peak is measure.peak_memory of bench.speed_step(method, window or length, mode="forward",
    sizes=matched quality sizes) on the CPU; cached per (method, tokens)."""
    calls = []

    def fake_peak(work, device, timeout):
        calls.append((work, device))
        return 3 * 2**20

    monkeypatch.setattr(grading, "_REF_PEAK_MEMORY", fake_peak)
    monkeypatch.setattr(grading, "_PEAKS", {})
    scenario = grading._capstone_cases(0)[0]
    assert grading._budget_compare(("choice", "rmt", 640), int(scenario["budget_mib"] * 2**20), scenario) \
        .endswith("peak memory 3.00 MiB > the budget 2.00 MiB")
    assert grading._budget_compare(("choice", "rmt", 640), 4 * 2**20, scenario) is None
    assert len(calls) == 1  # cached
    work, device = calls[0]
    assert work.func is bench.speed_step and work.args == ("rmt", 640) and device == "cpu"
    assert work.keywords == {"mode": "forward", "sizes": bench.matched_sizes("rmt", bench.QualityConfig().sizes)}


def test_shipped_models_are_read_when_the_cases_are_drawn(tmp_path, monkeypatch):
    """Checkpoints rewritten (here: removed) after the cases were drawn change nothing; missing before
    they were drawn, the project fails with what to do, and the grader does not crash."""
    monkeypatch.setattr(grading, "_SHIPPED", {})
    monkeypatch.setattr(grading, "_ACCURACY", {})
    grading.draw_cases("capstone_baseline", tmp_path)  # reads the shipped models
    monkeypatch.setattr(bench, "CHECKPOINT_DIR", tmp_path / "elsewhere")
    scenario = grading._capstone_cases(0)[0]
    assert grading._baseline_compare(("choice", *SOLUTION_CHOICE.values()), grading._baseline_reference(scenario),
                                     scenario) is None
    monkeypatch.setattr(grading, "_SHIPPED", {})
    monkeypatch.setattr(grading, "_ACCURACY", {})
    problems = grade_suite(tmp_path, monkeypatch, "capstone_baseline", _choice())
    assert problems and "could not be read" in problems[0] and "make checkpoints-bench" in problems[0], problems


def test_oracle_is_a_course_model_that_errs_where_it_cannot_see():
    model = grading._OracleLM(keep=1000, salt=3)
    tokens, mask = bench.task_batch("passkey", 16, 256, generator=torch.Generator().manual_seed(0))
    logits = bench.lm_logits(model, tokens)  # accepted as a course model
    assert logits.shape == (16, 256, tasks.TASK_VOCAB) and logits.dtype == torch.float64
    assert bench.evaluate_quality(model, "passkey", [256], n_sequences=16) == {256: 1.0}  # every key in view
    # the narrowest window (the question and the answer) never holds the key: no passkey is recalled
    assert grading._ref_windowed_accuracy(model, "passkey", 256, 4, 16, 0) == 0.0
    # keep < 1000 errs by a hash of the window: a window one token narrower changes which sequences are right
    model = grading._OracleLM(keep=990, salt=3)
    a = grading._ref_windowed_accuracy(model, "copy", 61, 61, 64, 0)
    b = grading._ref_windowed_accuracy(model, "copy", 61, 60, 64, 0)
    assert 0 < a < 1 and a != b


def _not_doubling(rows):
    pairs = {(r["method"], r["mode"]) for r in rows}
    for pair in pairs:
        lengths = sorted(r["length"] for r in rows if (r["method"], r["mode"]) == pair)
        if any(b != 2 * a for a, b in zip(lengths, lengths[1:])):
            return True
    return False


def test_cases_cover_what_the_prompts_promise():
    longest = _cases("capstone_longest")
    assert any(c["note"] == "rows in random order" for c in longest)
    assert any(isinstance(c["budget"], float) for c in longest) and any(isinstance(c["budget"], int) for c in longest)
    statuses = {r["status"] for c in longest for r in c["rows"]}
    assert statuses == {"ok", "over_budget", "oom", "timeout"}
    peaks = [(c["budget"], r["peak_bytes"]) for c in longest for r in c["rows"] if r["peak_bytes"] is not None]
    assert any(b == p for b, p in peaks) and any(b == p - 1 for b, p in peaks)  # at a peak, a byte below one
    answers = [grading._ref_longest_within(c["rows"], c["budget"]) for c in longest]
    assert any(None in a.values() for a in answers)
    # a noisy sweep: a longer "ok" row back under the budget after one over it
    assert any(_longest(c["rows"], c["budget"], mistake="skips_noise") != a for c, a in zip(longest, answers))
    # an over_budget row whose peak is under this budget
    assert any(r["status"] == "over_budget" and r["peak_bytes"] <= c["budget"] for c in longest for r in c["rows"])
    exponent = _cases("capstone_exponent")
    notes = {c["note"] for c in exponent}
    assert {"exactly two 'ok' rows", "fewer than two 'ok' rows: a ValueError", "no rows of that pair: a ValueError",
            "an over_budget row, measured but excluded"} <= notes
    assert any(_not_doubling(c["rows"]) for c in exponent)
    window = _cases("capstone_window")
    assert {c["task"] for c in window} == set(bench.TASKS)
    assert {c["model"].get("method") for c in window if c["model"]["kind"] == "bench"} == {"sdpa", "naive", "infini",
                                                                                            "rmt"}
    assert {1, 64} <= {c["n_sequences"] for c in window}
    needed = [c["length"] - grading._answer_start(c["task"], c["length"]) + 1 for c in window]
    assert any(c["window"] == n for c, n in zip(window, needed))  # the narrowest allowed
    assert any(c["window"] == n - 1 for c, n in zip(window, needed))  # one too narrow
    assert any(c["window"] > c["length"] for c in window) and any(c["window"] == c["length"] for c in window)
    assert sum(c["note"] == "a window at a passkey's edge" for c in window) >= 12


def test_case_drawing_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    _cases("capstone_window")
    grading._case_lm(_cases("capstone_window")[-12]["model"])
    grading._OracleLM(900, 1)
    assert torch.equal(torch.rand(3), before)


def test_library_is_blocked_while_graded(tmp_path, monkeypatch):
    def via_fitting(rows, budget_bytes):
        best = bench.longest_fitting([r for r in rows if r["peak_bytes"] is not None and r["peak_bytes"] <= budget_bytes])
        return {(m, mode): v for m, modes in best.items() for mode, v in modes.items()}

    def via_slope(rows, method, mode):
        ok = [r for r in rows if (r["method"], r["mode"]) == (method, mode) and r["status"] == "ok"]
        return measure.fit_loglog_slope([r["length"] for r in ok], [r["peak_bytes"] for r in ok])

    def via_evaluate(model, task, length, window, n_sequences, seed):
        return bench.evaluate_quality(model, task, [length], n_sequences=n_sequences, batch=n_sequences,
                                      seed=seed - length)[length]

    def via_answer_accuracy(model, task, length, window, n_sequences, seed):
        tokens, mask = bench.task_batch(task, n_sequences, length, generator=torch.Generator().manual_seed(seed))
        return tasks.answer_accuracy(bench.lm_logits(model, tokens[:, -window:]), tokens[:, -window:],
                                     mask[:, -window:])

    for suite, fn in (("capstone_longest_small", via_fitting), ("capstone_exponent_small", via_slope),
                      ("capstone_window_small", via_evaluate), ("capstone_window_small", via_answer_accuracy)):
        problems = grade_suite(tmp_path, monkeypatch, suite, fn)
        assert problems and "graded on its own" in problems[0], (suite, problems)
    for suite, kind in SUITES.items():
        blocked = set(grading.SUITES[suite].blocked())
        if kind == "choice":
            assert blocked == set(), suite  # nothing of the student's runs there
            continue
        assert {grading._ref_longest_within, grading._ref_memory_exponent, grading._ref_windowed_accuracy,
                grading._score_answers, grading._scenario_accuracy} <= blocked, suite
        assert (measure.longest_within in blocked) == (kind == "longest"), suite
        assert (measure.fit_loglog_slope in blocked) == (kind == "exponent"), suite
        assert (tasks.answer_accuracy in blocked) == (kind == "window"), suite
        assert bench.task_batch not in blocked and grading._case_lm not in blocked


def test_models_run_while_graded_and_torch_sdpa_stays_blocked_around_them():
    """check() blocks torch's fused SDPA; the course models need it, so it is handed back while they run."""
    import torch.nn.functional as F

    c = next(c for c in _cases("capstone_window") if c["model"].get("method") == "infini")
    with grading.graded_on_its_own(*grading.SUITES["capstone_window"].blocked()):
        got = grading._window_run(_windowed, c)
        with pytest.raises(AssertionError, match="graded on its own"):
            F.scaled_dot_product_attention(*(torch.zeros(1, 1, 2, 2),) * 3)
    assert got == grading._window_reference(c)
    assert F.scaled_dot_product_attention(*(torch.zeros(1, 1, 2, 2),) * 3).shape == (1, 1, 2, 2)


@pytest.mark.parametrize("source, suite, flagged", [
    ("from longctx_lib.bench import longest_fitting", "capstone_longest", True),
    ("from longctx_lib.measure import longest_within as lw", "capstone_longest_small", True),
    ("import longctx_lib\nlongctx_lib.measure.fit_loglog_slope([1, 2], [1, 2])", "capstone_exponent", True),
    ("from longctx_lib import bench", "capstone_window", True),  # the whole module, evaluate_quality included
    ("from longctx_lib.tasks import answer_accuracy", "capstone_window_small", True),
    ("from longctx_lib.grading import CAPSTONE_SCENARIO", "capstone_budget", True),
    ("from longctx_lib.grading import CAPSTONE_SCENARIO", "capstone_baseline", True),
    ("tokens, mask = bench.task_batch('passkey', 4, 64)", "capstone_window", False),  # the setup cell's bench
    ("from longctx_lib.bench import task_batch", "capstone_window", False),
    ("from longctx_lib.bench import longest_fitting", "capstone_window", False),
    ("from longctx_lib.bench import evaluate_quality", "rmt_run", False),  # chapter 6 unchanged
])
def test_static_scan(source, suite, flagged):
    assert bool(grading.forbidden_uses(suite, [source])) == flagged


@pytest.mark.parametrize("results", [
    [("dict", (("sdpa", "forward", "1024"),))], [("value", "0.5")], [("value",)], [None], [("choice", 3, None)],
    [("choice", "infini", 2.5)], [("dict", 3)],
])
def test_hand_made_results_fail_without_crashing_the_grader(tmp_path, results):
    for suite in ("capstone_longest_small", "capstone_exponent_small", "capstone_window_small", "capstone_budget",
                  "capstone_baseline"):
        cases = grading.draw_cases(suite, tmp_path)
        torch.save(results * len(cases), tmp_path / f"{suite}.out.pt")
        problems = grading.verify(suite, tmp_path, cases)
        assert problems and "checked by the grader" in problems[0], (suite, problems)


def test_scenario_is_plain_data_and_the_notebook_cannot_change_the_graders():
    scenario = grading.CAPSTONE_SCENARIO
    assert "CAPSTONE_SCENARIO" in grading.__all__
    assert set(scenario) == {"task", "length", "budget_mib", "n_sequences", "seed", "margin", "baseline"}
    assert scenario["baseline"]["method"] in bench.QualityConfig().methods
    case = grading._capstone_cases(0)[0]
    case["baseline"]["window"] = 1024  # a drawn case is a copy
    assert grading.CAPSTONE_SCENARIO["baseline"]["window"] == 128


# ============================================================ graded by nbgrader
LONGEST = {"test_longest_within_visible", "test_longest_within_hidden"}
EXPONENT = {"test_memory_exponent_visible", "test_memory_exponent_hidden"}
WINDOW = {"test_windowed_accuracy_visible", "test_windowed_accuracy_hidden"}
PROJECT = {"test_choice_budget", "test_choice_baseline"}
AUTOGRADED = LONGEST | EXPONENT | WINDOW | PROJECT

# Each: the answer cells it replaces ({grade_id: code}) and the test cells that must give it 0
# points; every other test cell must give full points.
_LONGEST_SKIPS_NOISE = '''
def longest_within(rows, budget_bytes):
    longest = {}
    for row in rows:
        pair = (row["method"], row["mode"])
        longest.setdefault(pair, None)
        if row["status"] == "ok" and row["peak_bytes"] <= budget_bytes:
            if longest[pair] is None or row["length"] > longest[pair]:
                longest[pair] = row["length"]
    return longest
'''
_EXPONENT_TWO_ENDS = '''
def memory_exponent(rows, method, mode):
    ok = sorted((r for r in rows if r["method"] == method and r["mode"] == mode and r["status"] == "ok"),
                key=lambda r: r["length"])
    if len(ok) < 2:
        raise ValueError(f"{method} {mode}: fewer than two ok rows")
    return math.log(ok[-1]["peak_bytes"] / ok[0]["peak_bytes"]) / math.log(ok[-1]["length"] / ok[0]["length"])
'''
_WINDOWED = '''
def windowed_accuracy(model, task, length, window, n_sequences, seed):
    tokens, mask = bench.task_batch(task, n_sequences, length, generator=torch.Generator().manual_seed(seed))
    first = int(mask[0].nonzero()[0])
    if not length - first + 1 <= window <= length:
        raise ValueError(f"window {{window}} does not hold the answer")
    w = {width}
    x, m = tokens[:, -w:], mask[:, -w:]
    with torch.no_grad():
        logits = bench.lm_logits(model, x)
    hit = (logits[:, :-1].argmax(-1) == x[:, 1:]) | ~m[:, {mask}]
    return hit.all(dim=1).float().mean().item()
'''
_WINDOWED_NO_SHIFT_IN_MASK = _WINDOWED.format(width="window", mask=":-1")
_WINDOWED_COPY_OFF_BY_ONE = _WINDOWED.format(width='min(length, window + 1) if task == "copy" else window',
                                             mask="1:")


def _choice_cell(method, window):
    return f'CHOICE = {{"method": "{method}", "window": {window}}}\n'


WRONG = {
    # The longest row that fits, as if the sweep went on: the hand table's noisy rmt row catches it.
    "longest_skips_noise": ({"longest_within": _LONGEST_SKIPS_NOISE}, LONGEST),
    # The slope through the two ends: right on exact powers, not on the noisy rows.
    "exponent_two_ends": ({"memory_exponent": _EXPONENT_TWO_ENDS}, EXPONENT),
    # The answer mask not shifted with the predictions.
    "window_mask_not_shifted": ({"windowed_accuracy": _WINDOWED_NO_SHIFT_IN_MASK}, WINDOW),
    # Infini-attention on the whole sequence: within the budget, short of the margin (0.174 < 0.225).
    "choice_whole_sequence": ({"choice": _choice_cell("infini", None)}, {"test_choice_baseline"}),
    # LSH on the last 512 tokens: the most accurate choice (0.303), 3-4.5 MiB, over the 2 MiB budget.
    "choice_over_budget": ({"choice": _choice_cell("lsh", 512)}, {"test_choice_budget"}),
    # The baseline itself: within the budget, and no better than itself.
    "choice_is_the_baseline": ({"choice": _choice_cell("sdpa", 128)}, {"test_choice_baseline"}),
    # Exact attention on everything: over the budget and below the baseline.
    "choice_exact_attention": ({"choice": _choice_cell("sdpa", None)}, PROJECT),
}
# Mistakes in three exercises at once: each exercise is graded on its own, so exactly the union of the
# three exercises' failures.
SEVERAL = ({"longest_within": _LONGEST_SKIPS_NOISE, "windowed_accuracy": _WINDOWED_NO_SHIFT_IN_MASK,
            "choice": _choice_cell("lsh", 512)}, LONGEST | WINDOW | {"test_choice_budget"})

# Right answers, but exercise 1 through the library's longest_fitting: the static scan finds
# longctx_lib.bench.longest_fitting in the student's code; only exercise 1 forbids it.
CALLS_LIBRARY = {"longest_within": (
    "from longctx_lib.bench import longest_fitting as _fitting\n\n\n"
    "def longest_within(rows, budget_bytes):\n"
    "    fits = [r for r in rows if r['peak_bytes'] is not None and r['peak_bytes'] <= budget_bytes]\n"
    "    found = {(r['method'], r['mode']): None for r in rows}\n"
    "    for method, modes in _fitting(fits).items():\n"
    "        found.update({(method, mode): v for mode, v in modes.items()})\n"
    "    return found\n")}
# The scenario read from the grader in an answer cell: every exercise forbids longctx_lib.grading.
IMPORTS_GRADING = {"choice": "from longctx_lib.grading import CAPSTONE_SCENARIO\n\n" + _choice_cell("infini", 512)}
# Tampering from inside the notebook, with module names the static scan cannot read:
# (1) a windowed_accuracy that is right except on copy with a narrower window (which no visible test
#     tries), and the kernel's reference patched to agree with it: the kernel's own comparison passes,
#     the grader's (its own pristine reference) does not;
# (2) a choice over the budget and below the baseline, and the kernel's project measurements patched to
#     say it fits and wins: the kernel passes it, the grader measures for itself;
# (3) right answers, and the checks silenced: the grader receives no results, nothing pays.
TAMPER_REFERENCE = {"windowed_accuracy": _WINDOWED_COPY_OFF_BY_ONE + (
    "\n\nimport importlib as _importlib\n\n"
    "_importlib.import_module('longctx' + '_lib.grading')._ref_windowed_accuracy = (\n"
    "    lambda model, task, length, window, n, seed, batch=None: windowed_accuracy(model, task, length, window, n, seed))\n")}
TAMPER_PROJECT = {"choice": _choice_cell("sdpa", None) + (
    "\nimport importlib as _importlib\n\n"
    "_grader = _importlib.import_module('longctx' + '_lib.grading')\n"
    "_grader._scenario_peak = lambda method, n_tokens: 1\n"
    "_grader._scenario_accuracy = lambda method, window, scenario: 0.0 if window == 128 else 1.0\n")}
SILENCE_CHECKS = {"longest_within": answer_cells(nbformat.read(SOURCE, as_version=4))["longest_within"].source + (
    "\n\nimport importlib as _importlib\n\n"
    "_importlib.import_module('longctx' + '_lib.grading').check = lambda *args, **kwargs: None\n")}
ESSENTIAL_WRONG = ("several_mistakes", "tamper_reference", "tamper_project")


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    return Course(tmp_path_factory.mktemp("nbgrader-course-07"), ASSIGNMENT)


@pytest.fixture(scope="module")
def graded(course):
    """``graded(name)``: the autograded submission ``name``, graded once per module."""
    return cached_grader(course, SOURCE, STUDENT, {**WRONG, "several_mistakes": SEVERAL,
                                                   "calls_library": (CALLS_LIBRARY, LONGEST),
                                                   "imports_grading": (IMPORTS_GRADING, AUTOGRADED),
                                                   "tamper_reference": (TAMPER_REFERENCE,
                                                                        {"test_windowed_accuracy_hidden"}),
                                                   "tamper_project": (TAMPER_PROJECT, PROJECT),
                                                   "silence_checks": (SILENCE_CHECKS, AUTOGRADED)})


def test_student_notebook_matches_generated():
    """(1) notebooks/07-capstone is what scripts/generate_student.py produces."""
    assert_student_matches_generated(ASSIGNMENT)


def test_source_notebook_is_well_formed():
    nb, grades = well_formed_grades(SOURCE)
    assert set(grades) == AUTOGRADED | {"ex5a_answer", "ex5b_answer"}
    check_assignment_layout(
        nb, grades, ASSIGNMENT, total=16, autograded=AUTOGRADED_POINTS,
        parameters=['DEVICE = "auto"', "SPEED_METHODS = ", "SPEED_START = ", "SPEED_STOP = ", "BUDGET_MIB = ",
                    "QUALITY_TASKS = ", "EVAL_MULTIPLES = ", "EVAL_SEQUENCES = "],
        exercises={1: LONGEST, 2: EXPONENT, 3: WINDOW, 4: PROJECT, 5: {"ex5a_answer", "ex5b_answer"}},
    )
    cells = {c.get("id"): c.source for c in nb.cells}
    # papermill's parameters: no apostrophes in the comments
    assert "'" not in cells["parameters"]
    # Light while nbgrader grades: no sweep, no accuracy table, no demonstration, no measurement of the choice.
    assert 'GRADING = os.environ.get("NBGRADER_EXECUTION") is not None' in cells["setup"]
    for cell in ("speed_sweep", "quality_table", "baseline_demo", "your_numbers"):
        assert "if GRADING" in cells[cell], cell
    assert "bench.measure_speed(" in cells["speed_sweep"] and "bench.evaluate_quality(" in cells["quality_table"]
    # The scenario comes from the grader and is printed.
    assert "from longctx_lib.grading import CAPSTONE_SCENARIO" in cells["setup"]
    assert "SOLUTION" not in cells["test_choice_budget"]
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit without outputs"
    # The model answers quote the run by the printed tables' names, not by numbers typed in.
    for name in ("`exponent`", "`longest within`", "`extrapolated to`", "accuracy table", "baseline table"):
        assert name in cells["ex5a_answer"], name
    for name in ("ring attention", "sequence", "state-space"):
        assert name in cells["ex5b_answer"].lower(), name


def test_student_notebook_hides_solutions_and_keeps_parameters():
    nb = nbformat.read(STUDENT, as_version=4)
    text = STUDENT.read_text(encoding="utf-8")
    for leak in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "_check(", "Rubric", "Model answer",
                 '"infini", "window": 512', "sorted(pair_rows", "x_mean, y_mean", "answer_mask.int().argmax"):
        assert leak not in text, f"the student notebook contains {leak!r}"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the papermill `parameters` tag was lost"
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    answers = answer_cells(nb)
    assert set(answers) == {"longest_within", "memory_exponent", "windowed_accuracy", "choice", "ex5a_answer",
                            "ex5b_answer"}
    for grade_id in ("longest_within", "memory_exponent", "windowed_accuracy"):
        assert "raise NotImplementedError()" in answers[grade_id].source, grade_id
        assert answers[grade_id].source.lstrip().startswith("def "), f"{grade_id}: keep the signature"
    assert "raise NotImplementedError()" in answers["choice"].source and "CHOICE =" not in answers["choice"].source


def test_solution_earns_full_marks(graded):
    """(2), and while nbgrader grades nothing is measured in the kernel but the checks."""
    result = graded("solution")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == result.max_total, f"lost points on {sorted(result.failed)}\n{result.log[-3000:]}"
    assert result.errors == {}, result.errors
    for cell in ("speed_sweep", "quality_table", "baseline_demo", "your_numbers"):
        assert printed_output(result.autograded, cell).startswith("grading:"), cell
    assert "budget_mib   2.0" in printed_output(result.autograded, "setup")


def test_untouched_student_notebook_earns_zero(graded):
    """(3)"""
    result = graded("untouched")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == 0, {k: v for k, v in result.scores.items() if v}
    assert "NameError" in result.errors["test_choice_budget"], result.errors


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name in ESSENTIAL_WRONG else pytest.mark.slow)
    for name in ("several_mistakes", *WRONG)
])
def test_wrong_submission_earns_partial_marks(graded, name):
    """(4) partial marks: exactly the test cells that can see the mistake pay."""
    result = graded(name)
    expected_failures = SEVERAL[1] if name == "several_mistakes" else WRONG[name][1]
    assert 0 < result.total < result.max_total, (result.total, result.max_total)
    assert result.failed == expected_failures, (
        f"{name}: failed {sorted(result.failed)}, expected {sorted(expected_failures)}\n{result.errors}")
    assert all(result.scores[c] == result.max_scores[c] for c in result.scores if c not in expected_failures)


def test_mistakes_are_explained_in_the_feedback(graded):
    errors = graded("several_mistakes").errors
    assert "2,048 tokens took 11 MiB: the sweep stops there" in errors["test_longest_within_visible"], errors
    assert "capstone_longest:" in errors["test_longest_within_hidden"] and "expected" in \
        errors["test_longest_within_hidden"], errors
    assert "is of token t + 1" in errors["test_windowed_accuracy_visible"], errors
    assert "lsh reading the last 512 tokens: peak memory" in errors["test_choice_budget"], errors


def test_patching_the_reference_in_the_kernel_does_not_fool_the_grader(graded):
    """(5) The kernel's own comparison agrees with the patched reference; the grader's does not."""
    result = graded("tamper_reference")
    assert result.failed == {"test_windowed_accuracy_hidden"}, result.scores
    error = result.errors["test_windowed_accuracy_hidden"]
    assert "checked by the grader" in error and "checked in this notebook" not in error, error


def test_patching_the_project_measurements_in_the_kernel_does_not_fool_the_grader(graded):
    """(5) The kernel is told that exact attention on everything fits and wins; the grader measures."""
    result = graded("tamper_project")
    assert result.failed == PROJECT, result.scores
    for cell in PROJECT:
        error = result.errors[cell]
        assert "checked by the grader" in error and "checked in this notebook" not in error, error
    assert "MiB > the budget" in result.errors["test_choice_budget"]


@pytest.mark.slow
def test_silencing_the_checks_earns_nothing(graded):
    """(5) check() replaced by a no-op: the test cells run without error in the kernel, and hand the
    grader nothing."""
    result = graded("silence_checks")
    assert result.total == 0 and result.failed == AUTOGRADED, result.scores
    assert "did not hand its results" in result.errors["test_choice_baseline"], result.errors


@pytest.mark.slow
def test_calling_the_library_costs_exercise_1_only(graded):
    result = graded("calls_library")
    assert result.failed == LONGEST, result.scores
    assert "longctx_lib.bench.longest_fitting" in result.errors["test_longest_within_hidden"], result.errors


@pytest.mark.slow
def test_importing_the_grader_costs_every_exercise(graded):
    result = graded("imports_grading")
    assert result.total == 0 and result.failed == AUTOGRADED, result.scores
    assert "longctx_lib.grading" in result.errors["test_choice_budget"], result.errors


@pytest.mark.parametrize("name", ["solution", "untouched", *ESSENTIAL_WRONG])
def test_grading_leaves_submission_unchanged(graded, name):
    """(6)"""
    result = graded(name)
    assert result.sha256_after == result.sha256_before
