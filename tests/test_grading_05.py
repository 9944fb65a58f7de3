"""Assignment 5 (Infini-attention): its grader suites, and nbgrader grading it.

Two parts, as for assignment 4 (``tests/test_grading_04.py``):

* The chapter-5 suites of ``longctx_lib.grading`` without nbgrader: right answers written from
  the prompts pass; each wrong answer fails exactly the suites that can see its mistake; the
  grader's own pieces (the gate's reference, the retrieval it hands exercise 3, the chained
  memories) agree with ``longctx_lib.infini`` and with the laws the prompts state (segment-wise
  linear memory == block-causal linear attention; a stored binding leaves the delta rule's M
  unchanged; a closed gate is local attention); the library is blocked and its use is found by
  the static scan; hand-made results fail without crashing the grader.
* The assignment graded by nbgrader, as a student's work would be:

  1. Regenerating the student notebook reproduces the committed ``notebooks/`` exactly.
  2. The solution notebook, submitted as a student's, earns every autograded point.
  3. The untouched student notebook earns none.
  4. Wrong submissions earn partial marks: exactly the points of the test cells that can
     detect their mistake. Each exercise is graded on its own (exercise 3 with a right
     retrieval), so one submission with mistakes in several exercises loses exactly the union
     of their cells, and a wrong retrieve costs the delta rule nothing.
  5. Tampering from inside the notebook earns nothing: patching the library in the kernel
     fools only the kernel's own comparison, and silencing the checks hands the grader no
     results.
  6. Grading leaves the submitted file byte for byte as it was.

One temporary course per module (generate_assignment once); each submission is autograded
once and shared by the tests that read its scores.
"""

from __future__ import annotations

import nbformat
import pytest
import torch
import torch.nn.functional as F
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

from longctx_lib import grading, infini

# nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every autograde.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")

ASSIGNMENT = "05-infini-attention"
SOURCE = REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
STUDENT = REPO / "notebooks" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
AUTOGRADED_POINTS = 10

SUITES = {"infini_retrieve_small": "retrieve", "infini_retrieve": "retrieve", "infini_linear_small": "linear",
          "infini_linear": "linear", "infini_linear_segments": "linear", "infini_delta_small": "delta",
          "infini_delta": "delta", "infini_delta_laws": "delta", "infini_gate_small": "gate", "infini_gate": "gate"}
EPS = 1e-6  # the prompts' EPS


# ============================================================ the suites, without nbgrader
# A student's answers, written here from the assignment's prompts (not the grader's code), with the
# mistakes the tests below make. They take other routes than the notebook's solution where the
# prompts allow one (einsum, an explicit exp for negative inputs, the gate as a lerp).
def _sigma(x):
    return torch.where(x > 0, x + 1, torch.exp(torch.clamp(x, max=0)))


def _retrieve(M, z, q, mistake=None):
    sq = _sigma(q)
    if mistake == "detached":
        sq = sq.detach()
    num = torch.einsum("bhld,bhdv->bhlv", sq, M)
    den = torch.einsum("bhld,bhd->bhl", sq, z)[..., None]
    if mistake == "no_normaliser":
        return num
    if mistake == "no_eps":
        return num / den
    if mistake == "clamp_eps":
        return num / den.clamp_min(EPS)
    return num / (den + EPS)


def _linear(M, z, k, v, mistake=None):
    sk = _sigma(k)
    add_M, add_z = torch.einsum("bhld,bhlv->bhdv", sk, v), sk.sum(dim=2)
    if mistake == "in_place":
        return M.add_(add_M), z.add_(add_z)
    if mistake == "detached":
        M, z = M.detach(), z.detach()
    if mistake == "no_sigma_in_z":
        add_z = k.sum(dim=2)
    if mistake == "mean":
        add_M, add_z = add_M / k.shape[2], add_z / k.shape[2]
    return M + add_M, z + add_z


def _delta(M, z, k, v, read=None, mistake=None):
    if mistake == "position_by_position":  # reads the memory again after every position
        for t in range(k.shape[2]):
            M, z = _delta(M, z, k[:, :, t:t + 1], v[:, :, t:t + 1], read)
        return M, z
    if mistake == "linear_rule":
        return _linear(M, z, k, v)
    if mistake == "detached":
        M, z = M.detach(), z.detach()
    sk = _sigma(k)
    new = v - read(M, z, k)
    add_z = sk.sum(dim=2)
    if mistake == "z_counts_residual":
        add_z = add_z * (new.abs().sum() / v.abs().sum())
    return M + torch.einsum("bhld,bhlv->bhdv", sk, new), z + add_z


def _gate(a_mem, a_dot, beta, mistake=None):
    g = torch.sigmoid(beta.detach() if mistake == "detached" else beta)
    if mistake == "swapped":
        g = 1 - g
    if mistake == "last_axis":  # broadcasts against d_value
        return torch.lerp(a_dot, a_mem, g)
    return torch.lerp(a_dot, a_mem, g[:, None, None].expand_as(a_mem))


_ANSWERS = {"retrieve": _retrieve, "linear": _linear, "delta": _delta, "gate": _gate}


def _wrong(kind, mistake):
    answer = _ANSWERS[kind]
    return lambda *args, **kwargs: answer(*args, **kwargs, mistake=mistake)


@pytest.mark.parametrize("suite", list(SUITES))
def test_right_answers_pass(tmp_path, monkeypatch, suite):
    assert grade_suite(tmp_path, monkeypatch, suite, _ANSWERS[SUITES[suite]]) == []


# (answer, mistake) -> {suite: words in the grader's report}; every other suite of that exercise passes.
WRONG_ANSWERS = {
    ("retrieve", "no_eps"): {s: "NaN or inf" for s in ("infini_retrieve_small", "infini_retrieve")},
    ("retrieve", "clamp_eps"): {s: "max |error|" for s in ("infini_retrieve_small", "infini_retrieve")},
    ("retrieve", "no_normaliser"): {s: "output: max |error|" for s in ("infini_retrieve_small", "infini_retrieve")},
    ("retrieve", "detached"): {"infini_retrieve": "no gradient reaches q"},
    ("linear", "in_place"): {s: "in place" for s in ("infini_linear_small", "infini_linear", "infini_linear_segments")},
    ("linear", "detached"): {s: "no gradient reaches M" for s in ("infini_linear", "infini_linear_segments")},
    ("linear", "no_sigma_in_z"): {s: "new z: max |error|" for s in
                                  ("infini_linear_small", "infini_linear", "infini_linear_segments")},
    ("linear", "mean"): {s: "new M: max |error|" for s in
                         ("infini_linear_small", "infini_linear", "infini_linear_segments")},
    ("delta", "linear_rule"): {"infini_delta_small": "new M: max |error|", "infini_delta": "new M: max |error|",
                               "infini_delta_laws": "the delta rule adds nothing to M"},
    ("delta", "position_by_position"): {s: "new M: max |error|" for s in
                                        ("infini_delta_small", "infini_delta", "infini_delta_laws")},
    ("delta", "detached"): {s: "no gradient reaches M" for s in ("infini_delta", "infini_delta_laws")},
    ("delta", "z_counts_residual"): {s: "new z: max |error|" for s in
                                     ("infini_delta_small", "infini_delta", "infini_delta_laws")},
    ("gate", "swapped"): {s: "output: max |error|" for s in ("infini_gate_small", "infini_gate")},
    # beta against d_value: a wrong shape, or an error where heads and d_value differ (and 1 is not one of them)
    ("gate", "last_axis"): {"infini_gate_small": "output: shape", "infini_gate": "must match the size"},
    ("gate", "detached"): {"infini_gate": "no gradient reaches beta"},
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


def test_position_by_position_delta_passes_single_positions(tmp_path, monkeypatch):
    """Reading the memory again after every position is the delta rule of segments of one position:
    right wherever a segment holds one position (the visible tests' hand-worked cases), wrong elsewhere."""
    problems = grade_suite(tmp_path, monkeypatch, "infini_delta_small", _wrong("delta", "position_by_position"))
    assert problems and "hand-worked" not in problems[0], problems


# ----------------------------------------------------------------- the grader's pieces vs the library
def _rel(got, want):
    return ((got - want).abs() / (1 + want.abs())).max().item()


def _cases(*names):
    return [c for name in names for c in grading.SUITES[name].cases(grading.SUITES[name].seed)]


def _block_causal_linear_attention(q, k, v, segment):
    """Linear attention of every query over the keys of every earlier segment, in one go."""
    seg = torch.arange(q.shape[2]) // segment
    visible = (seg[None, :] < seg[:, None]).to(q.dtype)  # (L, L)
    scores = (infini.sigma(q) @ infini.sigma(k).transpose(-1, -2)) * visible
    return (scores @ v) / (scores.sum(-1, keepdim=True) + infini.EPS)


def test_chained_linear_memory_is_the_sum_over_every_earlier_key():
    """The reference of the segment suite (the library's memory, one update per segment) holds after
    every segment the sum over every key before it; read before each update, it is block-causal
    linear attention over the whole sequence."""
    checked = 0
    for c in _cases("infini_linear_segments"):
        (M, z), _, unchanged = grading._mem_reference(c)
        sk = infini.sigma(c["k"])
        assert unchanged is True
        assert _rel(M, c["M"] + sk.transpose(-1, -2) @ c["v"]) < 1e-12, grading._mem_describe(c)
        assert _rel(z, c["z"] + sk.sum(2)) < 1e-12, grading._mem_describe(c)
        if not c["z"].any():  # from the empty memory: the retrievals are block-causal linear attention
            q = torch.randn(c["k"].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(checked))
            memory, reads = infini.CompressiveMemory(c["M"], c["z"]), []
            for s in range(0, q.shape[2], c["segments"]):
                part = slice(s, s + c["segments"])
                reads.append(memory.retrieve(q[:, :, part]))
                memory = memory.update(c["k"][:, :, part], c["v"][:, :, part])
            want = _block_causal_linear_attention(q, c["k"], c["v"], c["segments"])
            assert (torch.cat(reads, dim=2) - want).abs().max() < 1e-10, grading._mem_describe(c)
            checked += 1
    assert checked >= 4


def test_delta_law_cases_hold_their_laws():
    """What the prompts promise of the delta laws' cases: a stored binding leaves the library's M as
    it was; from the empty memory the reference is the linear rule's memory, and the library's delta
    rule agrees; one binding stored 40 times is read back as about v / 2."""
    cases = _cases("infini_delta_laws")
    stored = [c for c in cases if c.get("stored")]
    empty = [c for c in cases if c.get("reference_rule") == "linear"]
    assert len(stored) >= 4 and len(empty) >= 3
    for c in stored:
        (M, z), _, _ = grading._delta_law_reference(c)
        assert _rel(M, c["M"]) < 1e-12 and _rel(z, c["z"] + infini.sigma(c["k"]).sum(2)) < 1e-12
    for c in empty:
        (M, z), _, _ = grading._delta_law_reference(c)
        delta = infini.CompressiveMemory(c["M"], c["z"]).update(c["k"], c["v"], "delta")
        assert _rel(M, delta.M) < 1e-12 and _rel(z, delta.z) < 1e-12
        assert c["up"] is None  # values only: the gradients differ by the 1 / EPS of the empty retrieval
    again = next(c for c in cases if "40 times" in (c["note"] or ""))
    (M, z), _, _ = grading._mem_reference(again)
    k, v = again["k"][:, :, :1], again["v"][:, :, :1]
    share = ((infini.CompressiveMemory(M, z).retrieve(k) * v).sum((-1, -2)) / (v * v).sum((-1, -2)))
    assert ((share - 0.5).abs() < 0.1).all(), share


def test_read_handed_to_exercise_3_is_the_library_retrieval():
    for c in _cases("infini_retrieve_small", "infini_retrieve"):
        want = infini.CompressiveMemory(c["M"], c["z"]).retrieve(c["q"])
        assert _rel(grading._infini_read(c["M"], c["z"], c["q"]), want) < 1e-13, grading._mem_describe(c)


@pytest.mark.parametrize("rule", infini.RULES)
def test_gate_reference_is_the_layers_mixing(rule):
    """The gate's reference mixes as InfiniAttention.forward does: the layer's output equals its
    output projection of _ref_gate(a_mem, a_dot, beta), and a closed gate is local attention."""
    torch.manual_seed(0)
    layer = infini.InfiniAttention(16, 4, rule=rule).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 16, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        for beta in (torch.tensor([-3.0, -0.5, 0.4, 2.5]), torch.full((4,), -40.0)):
            layer.gate.copy_(beta)
            memory, outs, want = None, [], []
            for s in range(0, 24, 8):
                part = x[:, s:s + 8]
                out, after = layer(part, memory)
                q, k, v = layer.qkv(part).view(2, 8, 3, 4, 4).permute(2, 0, 3, 1, 4)
                before = memory or layer.empty_memory(2, dtype=torch.float64)
                a_mem = before.retrieve(q)
                a_dot = F.scaled_dot_product_attention(infini.rotary(q), infini.rotary(k), v, is_causal=True)
                mixed = grading._ref_gate(a_mem, a_dot, layer.gate)
                if beta[0] == -40.0:
                    assert (mixed - a_dot).abs().max() < 1e-12  # closed: local attention
                outs.append(out)
                want.append(layer.out(mixed.transpose(1, 2).reshape(2, 8, 16)))
                memory = after
            assert (torch.cat(outs, 1) - torch.cat(want, 1)).abs().max() < 1e-12


def test_cases_cover_what_the_prompts_promise():
    cases = {name: grading.SUITES[name].cases(0) for name in SUITES}
    for name in ("infini_retrieve", "infini_linear", "infini_delta"):
        found = cases[name]
        first = "q" if name == "infini_retrieve" else "k"
        assert any(not c["z"].any() for c in found), name  # the empty memory
        assert any(c["M"].shape[-2] == 1 for c in found), name  # d_key 1
        assert any(c[first].shape[2] == 1 for c in found), name  # length 1
        assert any(c["M"].shape[-2] != c["M"].shape[-1] for c in found), name  # d_key != d_value
        assert any((c["M"] < 0).any() and c["z"].any() for c in found), name  # negative entries
        assert any(c["up"] is not None for c in found), name  # gradients
        assert any(c["M"].dtype == torch.float32 for c in found), name
        assert all(c["tol"] <= 1e-10 for c in found if c["M"].dtype == torch.float64), name
    for name in ("infini_linear_segments", "infini_delta_laws"):
        chained = [c for c in cases[name] if c.get("segments")]
        assert any(c["segments"] == 1 and c["k"].shape[2] > 1 for c in chained), name
        assert any(c["segments"] >= c["k"].shape[2] for c in chained), name  # one segment
        assert any(c["k"].shape[2] % c["segments"] and c["segments"] < c["k"].shape[2] for c in chained), name
        assert any(c["up"] is not None for c in chained), name
        assert any(not c["z"].any() for c in chained) and any(c["z"].any() for c in chained), name
    gates = cases["infini_gate"]
    assert any(c["beta"].shape[0] == c["a_mem"].shape[-1] == c["a_mem"].shape[2] for c in gates)  # H = d_value = L
    assert any(c["beta"].shape[0] != c["a_mem"].shape[-1] for c in gates)
    assert any((c["beta"] == -40).any() and (c["beta"] == 40).any() for c in gates)  # closed and open side by side
    assert any(c["up"] is not None for c in gates) and any(c["a_mem"].dtype == torch.float32 for c in gates)


def test_library_is_blocked_while_graded(tmp_path, monkeypatch):
    via_library = lambda M, z, q: infini.CompressiveMemory(M, z).retrieve(q)  # noqa: E731
    problems = grade_suite(tmp_path, monkeypatch, "infini_retrieve_small", via_library)
    assert problems and "graded on its own" in problems[0]
    sigma_only = lambda M, z, q: infini.sigma(q) @ M / (infini.sigma(q) @ z[..., None] + EPS)  # noqa: E731
    problems = grade_suite(tmp_path, monkeypatch, "infini_retrieve_small", sigma_only)
    assert problems and "graded on its own" in problems[0]

    def delta_via_library(M, z, k, v, read=None):
        after = infini.CompressiveMemory(M, z).update(k, v, "delta")
        return after.M, after.z
    problems = grade_suite(tmp_path, monkeypatch, "infini_delta_small", delta_via_library)
    assert problems and "graded on its own" in problems[0]
    # exercise 3's read is the only helper of the grader a student's function may call, and only there
    for suite, kind in SUITES.items():
        blocked = set(grading.SUITES[suite].blocked())
        assert set(grading._module_functions(infini)) <= blocked, suite
        assert {grading._ref_gate, grading._ref_memory_values, grading._ref_memory_chain} <= blocked, suite
        assert (grading._infini_read in blocked) == (kind != "delta"), suite
    with grading.graded_on_its_own(*grading.SUITES["infini_gate"].blocked()), \
            pytest.raises(AssertionError, match="graded on its own"):
        grading._ref_gate(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1))
    memory = infini.CompressiveMemory.empty(1, 1, 2, 2)
    assert memory.retrieve(torch.zeros(1, 1, 3, 2)).shape == (1, 1, 3, 2)  # restored afterwards


@pytest.mark.parametrize("source, suite, flagged", [
    ("from longctx_lib.infini import CompressiveMemory", "infini_retrieve", True),
    ("from longctx_lib.infini import sigma", "infini_linear_segments", True),
    ("from longctx_lib import infini", "infini_gate", True),
    ("import longctx_lib\nlongctx_lib.infini.EPS", "infini_delta_laws", True),
    ("from longctx_lib.grading import _infini_read", "infini_delta", True),
    ("from longctx_lib.infini import CompressiveMemory", "chunk_forward", False),  # chapter 4 unchanged
    ("import torch.nn.functional as F\nF.elu", "infini_retrieve", False),
    ("from longctx_lib.attention import scaled_dot_product_attention", "infini_gate", False),
])
def test_static_scan(source, suite, flagged):
    assert bool(grading.forbidden_uses(suite, [source])) == flagged


@pytest.mark.parametrize("results", [[(1, 2)], [None], [((None,), None, True)], ["nonsense"],
                                     [((None, None), (None,) * 4, "yes")]])
def test_hand_made_results_fail_without_crashing_the_grader(tmp_path, results):
    for suite in ("infini_retrieve_small", "infini_linear_small", "infini_delta_small", "infini_gate_small"):
        cases = grading.draw_cases(suite, tmp_path)
        torch.save(results * len(cases), tmp_path / f"{suite}.out.pt")
        problems = grading.verify(suite, tmp_path, cases)
        assert problems and "checked by the grader" in problems[0], (suite, problems)


def test_right_values_from_a_changed_input_are_refused(tmp_path, monkeypatch):
    """Right outputs, but the caller's M changed: refused even where no gradient is asked for."""
    def sneaky(M, z, k, v):
        right = _linear(M, z, k, v)
        if not M.requires_grad:
            M.zero_()
        return right
    problems = grade_suite(tmp_path, monkeypatch, "infini_linear_small", sneaky)
    assert problems and "in place" in problems[0], problems


# ============================================================ graded by nbgrader
RETRIEVE = {"test_retrieve_visible", "test_retrieve_hidden"}
LINEAR = {"test_linear_update_visible", "test_linear_update_hidden", "test_linear_update_segments"}
DELTA = {"test_delta_update_visible", "test_delta_update_hidden", "test_delta_update_laws"}
GATE = {"test_gate_visible", "test_gate_hidden"}
AUTOGRADED = RETRIEVE | LINEAR | DELTA | GATE

# Each: the answer cells it replaces ({grade_id: code}) and the test cells that must give it 0
# points; every other test cell must give full points.
_RETRIEVE = '''
def retrieve(M, z, q):
    {body}
'''
_RETRIEVE_DETACHED = _RETRIEVE.format(body="""with torch.no_grad():
        sq = sigma(q)
    return (sq @ M) / (sq @ z[..., None] + EPS)""")
_RETRIEVE_NO_EPS = _RETRIEVE.format(body="return (sigma(q) @ M) / (sigma(q) @ z[..., None])")
_LINEAR = '''
def linear_update(M, z, k, v):
    sk = sigma(k)
    {body}
'''
_LINEAR_IN_PLACE = _LINEAR.format(body="M += sk.transpose(-1, -2) @ v\n    z += sk.sum(dim=2)\n    return M, z")
_LINEAR_DETACHED = _LINEAR.format(body="return M.detach() + sk.transpose(-1, -2) @ v, z.detach() + sk.sum(dim=2)")
_DELTA_LINEAR_RULE = '''
def delta_update(M, z, k, v, read=None):
    read = retrieve if read is None else read
    sk = sigma(k)
    return M + sk.transpose(-1, -2) @ v, z + sk.sum(dim=2)
'''
_GATE_SWAPPED = '''
def gate(a_mem, a_dot, beta):
    g = torch.sigmoid(beta)[:, None, None]
    return (1 - g) * a_mem + g * a_dot
'''

WRONG = {
    # No gradient through the retrieval: the values are right (every visible test passes); only the
    # hidden tests, which back-propagate, see it.
    "retrieve_detached": ({"retrieve": _RETRIEVE_DETACHED}, {"test_retrieve_hidden"}),
    # No EPS: the empty memory returns 0/0 = NaN (a visible test) and nothing else changes much.
    "retrieve_no_eps": ({"retrieve": _RETRIEVE_NO_EPS}, RETRIEVE),
    # M += ...: the caller's memory changes (the visible test checks the empty memory stays empty).
    "linear_in_place": ({"linear_update": _LINEAR_IN_PLACE}, LINEAR),
    # The memory detached: right values, no gradient to earlier segments.
    "linear_detached": ({"linear_update": _LINEAR_DETACHED}, {"test_linear_update_hidden",
                                                              "test_linear_update_segments"}),
    # The linear rule under the delta rule's name: right only from the empty memory.
    "delta_is_linear": ({"delta_update": _DELTA_LINEAR_RULE}, DELTA),
    # Memory and local attention swapped: wrong wherever the gate is not half open.
    "gate_swapped": ({"gate": _GATE_SWAPPED}, GATE),
}
# Mistakes in three exercises at once, and a right delta_update that calls the (wrong) retrieve of
# exercise 1 through `read`: each exercise is graded on its own, so exactly the union of the three
# exercises' failures, and exercise 3 earns everything (its tests pass a right read).
SEVERAL = ({"retrieve": _RETRIEVE_NO_EPS, "linear_update": _LINEAR_DETACHED, "gate": _GATE_SWAPPED},
           RETRIEVE | {"test_linear_update_hidden", "test_linear_update_segments"} | GATE)

# Right answers, but exercise 1 through the library's CompressiveMemory: the static scan finds
# longctx_lib.infini in the student's code, and every exercise forbids it, so none earns points.
CALLS_LIBRARY = {"retrieve": (
    "from longctx_lib.infini import CompressiveMemory as _Memory\n\n\n"
    "def retrieve(M, z, q):\n"
    "    return _Memory(M, z).retrieve(q)\n")}
# Tampering from inside the notebook, with module names the static scan cannot read:
# (1) a retrieval that is right except for its gradient, and the kernel's library patched to agree
#     with it: the kernel's own comparison passes, the grader's (its own pristine library) does not;
# (2) a wrong gate, and the checks silenced: the grader receives no results, and no test cell pays.
TAMPER_LIBRARY = {"retrieve": _RETRIEVE_DETACHED + (
    "\n\nimport importlib as _importlib\n\n"
    "_importlib.import_module('longctx' + '_lib.infini').CompressiveMemory.retrieve = (\n"
    "    lambda self, q: retrieve(self.M, self.z, q))\n")}
SILENCE_CHECKS = {"gate": _GATE_SWAPPED + (
    "\n\nimport importlib as _importlib\n\n"
    "_importlib.import_module('longctx' + '_lib.grading').check = lambda *args, **kwargs: None\n")}
ESSENTIAL_WRONG = ("several_mistakes", "tamper_library")


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Course:
    return Course(tmp_path_factory.mktemp("nbgrader-course-05"), ASSIGNMENT)


@pytest.fixture(scope="module")
def graded(course):
    """``graded(name)``: the autograded submission ``name``, graded once per module."""
    return cached_grader(course, SOURCE, STUDENT, {**WRONG, "several_mistakes": SEVERAL,
                                                   "calls_library": (CALLS_LIBRARY, AUTOGRADED),
                                                   "tamper_library": (TAMPER_LIBRARY, {"test_retrieve_hidden"}),
                                                   "silence_checks": (SILENCE_CHECKS, GATE)})


def test_student_notebook_matches_generated():
    """(1) notebooks/05-infini-attention is what scripts/generate_student.py produces."""
    assert_student_matches_generated(ASSIGNMENT)


def test_source_notebook_is_well_formed():
    nb, grades = well_formed_grades(SOURCE)
    assert set(grades) == AUTOGRADED | {"ex5_answer"}
    check_assignment_layout(
        nb, grades, ASSIGNMENT, total=13, autograded=AUTOGRADED_POINTS,
        parameters=['DEVICE = "auto"', "EVAL_MULTIPLES = ", "N_PER_CELL = ", "DEMO_LENGTH = "],
        exercises={1: RETRIEVE, 2: LINEAR, 3: DELTA, 4: GATE, 5: {"ex5_answer"}},
    )
    cells = {c.get("id"): c.source for c in nb.cells}
    # Light while nbgrader grades: short inputs, two evaluation lengths, two passkeys a cell, no training.
    assert 'GRADING = os.environ.get("NBGRADER_EXECUTION") is not None' in cells["setup"]
    assert "256 if GRADING else DEMO_LENGTH" in cells["assemble"]
    assert "[1, 2] if GRADING else EVAL_MULTIPLES" in cells["passkey_curve"]
    assert "2 if GRADING else N_PER_CELL" in cells["passkey_curve"]
    assert "train_if_missing=not GRADING" in cells["passkey_curve"]
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit without outputs"


def test_student_notebook_hides_solutions_and_keeps_parameters():
    nb = nbformat.read(STUDENT, as_version=4)
    text = STUDENT.read_text(encoding="utf-8")
    for leak in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "_check(", "Rubric", "Model answer",
                 "(sq @ M) / (sq @ z[..., None] + EPS)", "sk.transpose(-1, -2) @ new",
                 "torch.sigmoid(beta).to(a_mem.dtype)[:, None, None]"):
        assert leak not in text, f"the student notebook contains {leak!r}"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the papermill `parameters` tag was lost"
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    answers = answer_cells(nb)
    assert set(answers) == {"retrieve", "linear_update", "delta_update", "gate", "ex5_answer"}
    for grade_id, cell in answers.items():
        if cell.cell_type == "code":
            assert "raise NotImplementedError()" in cell.source, grade_id
            assert cell.source.lstrip().startswith("def "), f"{grade_id}: keep the signature"
    # The given first line of exercise 3 (the read the hidden tests replace) stays in the stub.
    assert "read = retrieve if read is None else read" in answers["delta_update"].source


def test_solution_earns_full_marks(graded):
    """(2), the assembled layer matches the library for both rules, and the light measurements run."""
    result = graded("solution")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == result.max_total, f"lost points on {sorted(result.failed)}\n{result.log[-3000:]}"
    assert result.errors == {}, result.errors
    assembled = printed_output(result.autograded, "assemble")
    assert assembled.count("(they agree)") == 2 and "256 tokens" in assembled, assembled
    rules = printed_output(result.autograded, "rules_demo")
    assert "after  64 stores" in rules, rules
    # the shipped checkpoints of both rules, evaluated at two lengths while grading (nothing trained)
    curve = printed_output(result.autograded, "passkey_curve")
    assert curve.count("Whole passkeys retrieved (%), 2 per cell") == 2 and "no trained model" not in curve, curve
    assert curve.count("learned gates") == 2, curve


def test_untouched_student_notebook_earns_zero(graded):
    """(3)"""
    result = graded("untouched")
    assert result.max_total == AUTOGRADED_POINTS
    assert result.total == 0, {k: v for k, v in result.scores.items() if v}
    # The given cells say what is missing instead of failing; the passkey curve needs no exercise.
    assert "finish exercises 1-4" in printed_output(result.autograded, "assemble")
    assert "finish exercises 1-3" in printed_output(result.autograded, "rules_demo")
    assert "passkey_curve" not in result.errors


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
    assert "add EPS to the denominator" in errors["test_retrieve_visible"], errors
    assert "no gradient reaches M" in errors["test_linear_update_segments"], errors
    assert "output: max |error|" in errors["test_gate_hidden"], errors


def test_patching_the_library_in_the_kernel_does_not_fool_the_grader(graded):
    """(5) The kernel's own comparison agrees with the patched library; the grader's does not."""
    result = graded("tamper_library")
    assert result.failed == {"test_retrieve_hidden"}, result.scores
    error = result.errors["test_retrieve_hidden"]
    assert "checked by the grader" in error and "checked in this notebook" not in error, error


@pytest.mark.slow
def test_silencing_the_checks_earns_nothing(graded):
    """(5) check() replaced by a no-op: every test cell after it runs without error in the kernel, and
    hands the grader nothing."""
    result = graded("silence_checks")
    assert result.failed == GATE, result.scores
    assert "did not hand its results" in result.errors["test_gate_hidden"], result.errors


@pytest.mark.slow
def test_calling_the_library_costs_exercises_1_to_4(graded):
    result = graded("calls_library")
    assert result.total == 0 and result.failed == AUTOGRADED, result.scores
    errors = result.errors
    assert "longctx_lib.infini.CompressiveMemory" in errors["test_gate_hidden"], errors
    assert "graded on its own" in errors["test_retrieve_hidden"], errors


@pytest.mark.parametrize("name", ["solution", "untouched", *ESSENTIAL_WRONG])
def test_grading_leaves_submission_unchanged(graded, name):
    """(6)"""
    result = graded(name)
    assert result.sha256_after == result.sha256_before
