"""Passkey retrieval with a tiny Infini-attention model, and the gate's learning rate.

Chapter 5 (Infini-attention) runs these experiments and explains them.
Reference: Munkhdalai, Faruqui, Gopal, "Leave no context behind: efficient infinite
context transformers with Infini-attention" (2024, arXiv 2404.07143): a 1B model with
Infini-attention, fine-tuned for 400 steps on 5K-token passkey sequences, retrieves the
key at up to 1M tokens.
A public reproduction (Hugging Face, Aug 2024) did not get reliable retrieval and saw the
gates stay near 0.5 under Adam at small learning rates.

The task (:func:`~longctx_lib.tasks.passkey_batch`): a number of ``n_digits`` digits,
``KEY d1 .. dn``, hidden at some depth in periodic filler; the sequence ends with
``QUERY d1 .. dn``. The model is scored on the answer digits only (a sequence counts when
every digit is right; chance is ``10 ** -n_digits``). When the key lies in an earlier
segment than the question, the only way to it is the compressive memory.

The experiment (:data:`PASSKEY_RUNS`), all with the same tiny
:class:`~longctx_lib.infini.InfiniTransformer` (``d_model`` 64, 4 heads, ``d_ff`` 256,
2 layers, segments of 32 tokens, 101 K parameters), trained for 1,500 steps on sequences
of :data:`TRAIN_LENGTH` = 128 tokens (4 segments) with ``n_digits = 3`` (chance: 0.1 %):

* ``linear`` and ``delta``: the two memory update rules, everything else equal, evaluated
  at 1x to 64x the training length (128 to 8,192 tokens, 4 to 256 segments) and at five
  depths of the key (:func:`evaluate_passkey`).
* ``gate-lr-small`` and ``gate-lr-large``: the ``linear`` run with the gates' ``beta``
  trained at a hundredth (1e-5) and at ten times (1e-2) the learning rate of the other
  weights (``linear`` itself uses 1e-3 for both). The gates are recorded over training
  (``history["gates"]``). Adam moves a parameter by at most a few times its learning
  rate per step (about once when the gradient keeps its sign), so after ``T`` steps
  ``|beta_T - beta_0| <~ gate_lr * T``: at ``gate_lr = 1e-5`` over 1,500 steps
  ``sigmoid(beta)`` cannot leave ``0.5 +- 0.007`` whatever the gradient says. That is
  the reproduction's "stuck at 0.5".

What came out (``checkpoints/passkey/histories.json`` has every number; 32 sequences per
cell, so a cell's accuracy is uncertain by about +-0.08 near 50 %):

* Both rules learn to retrieve through the memory. On the last training batches 96 %
  (linear) and 98 % (delta) of passkeys are right; at 1x a key at depth 0, three segments
  before the question's, is read every time (32/32) by both: only the memory reaches it.
* Neither extrapolates. Where the key is behind the question's segment, accuracy falls
  with every doubling of the length (linear, depth 0: 1.00, 0.88, 0.59, 0.41, 0.19, 0.03,
  0.00 from 1x to 64x; delta falls faster after 1x) and is 0-3 % from 32x on. The memory is
  a normalised sum over every stored token: the filler's share of it grows with the length
  and dilutes the four key tokens (the reproduction's "quality fell as the number of
  compressions grew"). A key in the question's own segment (depth 1) is read by local
  attention and stays at 75-100 % at every length; it alone makes the mean over depths
  about 0.19 at 64x.
* The gate's learning rate does not decide retrieval here. With gates frozen at 0.50
  (``gate-lr-small``) accuracy is that of ``linear`` (whose gates drifted only to
  0.42-0.57 in 1,500 steps at 1e-3); at 1e-2 the gates spread (first layer 0.64-0.76,
  towards the memory; second layer 0.33-0.53, towards local attention) and accuracy is
  again the same within the noise. A head can ignore half of its mixture by what it
  writes and reads: a half-open gate is not what stops this model.

Why this size: CPU time. The four runs train on two shared CPU cores in about 14 minutes
(measured, one thread each, load 2-5: linear 3.5, delta 4.3, gate-lr-small 2.5,
gate-lr-large 3.2), plus 25 s each to evaluate the whole grid up to 64x; a training step
(32 sequences of 128 tokens through 4 segments, forward and backward) takes 0.1-0.2 s.
The checkpoints take 220 KB each in float16.

The recipe, and what was tried (exploratory runs of the same model at a constant
``lr = 1e-3``, 1,500 steps unless said, each ~10 minutes on the busy 2-core machine; whole
3-digit passkeys on 64 sequences per cell at depths 0 / 0.5 / 0.9 / 1):

* Kept: loss on the answer digits only, Adam at ``lr = 1e-3`` (50 warm-up steps, cosine
  decay to a tenth), gradients clipped at norm 1, batch 32, gradients through the memory
  across all 4 segments (``truncate=None``), keys at uniformly random depths, no
  curriculum. Both rules pass 90 % on the training batches within about 1,000 steps.
* Keys only in segments before the question's, to force the memory: no better through
  the memory (1x: 0.97 / 0.31 / 0 / 0) and local retrieval never learned.
* Training lengths drawn per step from 2 to 6 segments (mean 4): softer decay (linear at
  4x: 0.75 / 0.25 / 0.86 against 0.52 / 0.17 / 0.47 with 4 fixed segments and 2,500
  steps; delta at 4x: 0.77 / 0.61 / 0.81 against 0.25 / 0.27 / 0.25) but at 16x still
  0.11-0.17 at depth 0.
  Not kept: the training length would stop being one number.
* A length curriculum (1,200 steps at 4 segments, then 300 at 16 = 512 tokens) moves the
  cliff with the training length: at 512 tokens 0.97 / 0.78 / 1.00, at 2x that 0.89 /
  0.52 / 0.80, at 4x 0.52 / 0.22 / 0.33, and it unlearns 128 (0.45 / 0.55 / 0.78).
  The decay follows the ratio to the longest training length, at 4 x the cost per step.
* Keys that straddle a segment boundary were expected to be hard, since the memory has no
  positions: at every length that is a multiple of 128 (3 digits, segments of 32), depth
  0.25 puts ``KEY d1`` at the end of one segment and ``d2 d3`` at the start of the next
  (``"straddles"`` in :func:`evaluate_passkey`). They are not, at 1x and 2x (0.84-1.00),
  and decay like the rest.

The repository ships the trained models in ``checkpoints/passkey/``
(:func:`load_or_train_passkey`: load-else-train); they are regenerated by::

    python scripts/train_passkey.py
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._checkpoints import (
    check_bool,
    check_path,
    find_checkpoint_dir,
    load_else_train,
    named_run,
    read_checkpoint,
    same_config,
    save_weights,
)
from .device import resolve_device
from .infini import RULES, InfiniTransformer
from .tasks import PASSKEY_VOCAB, passkey_batch

__all__ = [
    "TRAIN_LENGTH",
    "PASSKEY_MODEL",
    "PASSKEY_RUNS",
    "EVAL_MULTIPLES",
    "REGENERATE_COMMAND",
    "CHECKPOINT_DIR",
    "build_passkey_model",
    "passkey_optimizer",
    "train_passkey",
    "evaluate_passkey",
    "save_passkey",
    "load_passkey",
    "load_or_train_passkey",
]

TRAIN_LENGTH = 128
"""Tokens per training sequence of every shipped run: 4 segments of 32."""

PASSKEY_MODEL: dict = {
    "d_model": 64,
    "n_heads": 4,
    "d_ff": 256,
    "n_layers": 2,
    "segment_length": 32,
    "gate_init": 0.0,  # sigmoid(0) = 0.5: half memory, half local attention
    "truncate": None,  # gradients through the memory across every training segment
}
"""The :class:`~longctx_lib.infini.InfiniTransformer` sizes shared by every run (``rule`` is set per run)."""

EVAL_MULTIPLES = (1, 2, 4, 8, 16, 32, 64)
"""Evaluation lengths of the shipped runs, in multiples of the training length (128 to 8,192 tokens)."""

_RUN_KEYS = ("d_model", "n_heads", "d_ff", "n_layers", "segment_length", "gate_init", "truncate", "rule",
             "train_length", "n_digits", "steps", "batch", "lr", "gate_lr", "warmup", "grad_clip", "seed",
             "record_every")


def _run(rule: str, gate_lr: float, steps: int = 1500) -> dict:
    return {
        **PASSKEY_MODEL,
        "rule": rule,
        "train_length": TRAIN_LENGTH,
        "n_digits": 3,
        "steps": steps,
        "batch": 32,
        "lr": 1e-3,
        "gate_lr": gate_lr,
        "warmup": 50,
        "grad_clip": 1.0,
        "seed": 0,
        "record_every": 25,
    }


PASSKEY_RUNS: dict[str, dict] = {
    "linear": _run("linear", 1e-3),
    "delta": _run("delta", 1e-3),
    "gate-lr-small": _run("linear", 1e-5),
    "gate-lr-large": _run("linear", 1e-2),
}
"""The shipped runs, by checkpoint name.

Every run: the :data:`PASSKEY_MODEL` sizes, ``rule`` (``"linear"`` or ``"delta"``),
``train_length`` tokens per sequence, ``n_digits`` per passkey, ``steps`` of ``batch``
sequences drawn afresh (seeded by ``seed``), Adam at ``lr`` for every weight but the gates
and ``gate_lr`` for the gates' ``beta`` (:func:`passkey_optimizer`), both warmed up over
``warmup`` steps and decayed along a cosine to a tenth; gradients clipped to norm
``grad_clip``. Every ``record_every`` steps the history records the mean loss and
train-batch accuracy since the last record and the gates.

``gate-lr-small`` and ``gate-lr-large`` are the ``linear`` run with ``gate_lr`` a hundredth
(1e-5) and ten times (1e-2) the other weights' rate; ``linear`` and ``delta`` use 1e-3 for both.
"""

REGENERATE_COMMAND = "python scripts/train_passkey.py"
"""The command that trains every run of :data:`PASSKEY_RUNS` and rewrites ``checkpoints/passkey``."""

CHECKPOINT_DIR: Path = find_checkpoint_dir(Path("checkpoints") / "passkey", "LONGCTX_PASSKEY_CHECKPOINTS")
"""Where the shipped checkpoints live: the repository's ``checkpoints/passkey`` (override
with the environment variable ``LONGCTX_PASSKEY_CHECKPOINTS``)."""


# -------------------------------------------------------------------- checking
def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return value


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return float(value)


def _check_run(run: object) -> dict:
    """A deep copy of a run spec like the values of :data:`PASSKEY_RUNS` (the named run when given a name)."""
    named = named_run(run, PASSKEY_RUNS, "PASSKEY_RUNS")
    if named is not None:
        return named
    missing = [k for k in _RUN_KEYS if k not in run]
    if missing:
        raise ValueError(f"run is missing keys {missing}; start from copy.deepcopy(PASSKEY_RUNS['linear'])")
    for key in ("d_model", "n_heads", "d_ff", "n_layers", "segment_length", "train_length", "n_digits", "steps",
                "batch", "record_every"):
        _check_int(f"run[{key!r}]", run[key])
    _check_int("run['warmup']", run["warmup"], 0)
    _check_int("run['seed']", run["seed"], 0)
    for key in ("lr", "gate_lr", "grad_clip"):
        _check_rate(f"run[{key!r}]", run[key])
    if run["rule"] not in RULES:
        raise ValueError(f"run['rule'] must be one of {RULES}; got {run['rule']!r}")
    if run["train_length"] < 2 * (run["n_digits"] + 1):
        raise ValueError(f"run['train_length'] must be >= {2 * (run['n_digits'] + 1)} (the key and the question, "
                         f"n_digits + 1 tokens each); got {run['train_length']!r}")
    return copy.deepcopy(run)


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module) or not callable(getattr(model, "stream", None)) or not isinstance(
            getattr(model, "segment_length", None), int):
        raise TypeError("model must be an InfiniTransformer (a module with .stream(segments) and an integer "
                        f".segment_length); got {type(model).__name__}")


# ------------------------------------------------------------------- the model
def build_passkey_model(run: str | dict) -> InfiniTransformer:
    """A freshly initialised :class:`~longctx_lib.infini.InfiniTransformer` for ``run`` (a name
    of :data:`PASSKEY_RUNS` or a dict like its values), over :data:`~longctx_lib.tasks.PASSKEY_VOCAB`.

    The run is attached as ``model.passkey_run`` (so :func:`evaluate_passkey` knows the
    number of digits). Seed ``torch`` first for a reproducible start.
    """
    run = _check_run(run)
    model = InfiniTransformer(PASSKEY_VOCAB, run["d_model"], run["n_heads"], run["d_ff"], run["n_layers"],
                              segment_length=run["segment_length"], rule=run["rule"], gate_init=run["gate_init"],
                              truncate=run["truncate"])
    model.passkey_run = run
    return model


def passkey_optimizer(model: InfiniTransformer, run: str | dict) -> torch.optim.Adam:
    """Adam with two parameter groups: ``"weights"`` at ``run["lr"]`` and ``"gates"`` (the
    gates' ``beta``, :meth:`~longctx_lib.infini.InfiniTransformer.gate_parameters`) at ``run["gate_lr"]``.

    Each group keeps its base rate as ``"base_lr"``; :func:`train_passkey` scales both by
    the same schedule.
    """
    if not isinstance(model, InfiniTransformer):
        raise TypeError(f"model must be an InfiniTransformer; got {type(model).__name__}")
    run = _check_run(run)
    gates = model.gate_parameters()
    ids = {id(p) for p in gates}
    weights = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.Adam([
        {"params": weights, "lr": run["lr"], "base_lr": run["lr"], "name": "weights"},
        {"params": gates, "lr": run["gate_lr"], "base_lr": run["gate_lr"], "name": "gates"},
    ])


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then a cosine down to 0.1 at ``steps``."""
    if step <= warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _answer_loss(logits: Tensor, tokens: Tensor, n_digits: int) -> tuple[Tensor, Tensor]:
    """Cross-entropy on the answer digits only, and the hits ``(batch, n_digits)``."""
    length = tokens.shape[1]
    pred = logits[:, length - n_digits - 1: length - 1]  # (B, n, V): predictions of the answer digits
    target = tokens[:, length - n_digits:]  # (B, n)
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))
    return loss, pred.argmax(-1) == target


def train_passkey(run: str | dict, *, steps: int | None = None, progress: bool = True,
                  device: str | torch.device = "cpu") -> tuple[InfiniTransformer, dict]:
    """Train one run (a name of :data:`PASSKEY_RUNS` or a dict like its values) from scratch.

    Every step draws ``run["batch"]`` fresh passkey sequences of ``run["train_length"]``
    tokens (keys at uniformly random depths), reads them segment by segment with gradients
    through the memory, and takes one Adam step (:func:`passkey_optimizer`) on the
    cross-entropy of the answer digits. ``steps`` overrides ``run["steps"]`` (and is
    recorded in ``history["run"]``). The caller's random state is left as it was.

    Returns:
        ``(model, history)``, the model in eval mode on ``device``. ``history`` holds, every
        ``run["record_every"]`` steps (and at the last step): ``"step"``, ``"loss"`` and
        ``"accuracy"`` (means over the steps since the previous record; accuracy of whole
        passkeys on the training batches), ``"gates"`` (``sigmoid(beta)`` of every layer and
        head, ``n_layers * n_heads`` numbers, layer by layer) and ``"elapsed"`` (seconds);
        plus ``"gates_initial"``, ``"seconds"`` (the whole training), ``"run"``,
        ``"n_parameters"`` and ``"torch"``.
    """
    run = _check_run(run)
    if steps is not None:
        run["steps"] = _check_int("steps", steps)
    check_bool(progress=progress)
    device = resolve_device(device)
    n, length = run["n_digits"], run["train_length"]
    history: dict = {"step": [], "loss": [], "accuracy": [], "gates": [], "elapsed": []}
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(run["seed"])
        model = build_passkey_model(run).to(device).train()
        history["gates_initial"] = model.gates().flatten().tolist()
        optimizer = passkey_optimizer(model, run)
        data = torch.Generator().manual_seed(run["seed"])
        loss_sum, acc_sum, count = 0.0, 0.0, 0
        bar = tqdm(range(1, run["steps"] + 1), desc=f"passkey {run['rule']}", disable=not progress, leave=False)
        for step in bar:
            tokens, _ = passkey_batch(run["batch"], length, n_digits=n, generator=data)  # (B, L)
            tokens = tokens.to(device)
            logits, _ = model(tokens)  # (B, L, vocab), segment by segment through the memory
            loss, hits = _answer_loss(logits, tokens, n)
            factor = _lr_factor(step, run["steps"], run["warmup"])
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), run["grad_clip"])
            optimizer.step()
            loss_sum += loss.item()
            acc_sum += hits.all(dim=1).float().mean().item()
            count += 1
            if step % run["record_every"] == 0 or step == run["steps"]:
                history["step"].append(step)
                history["loss"].append(loss_sum / count)
                history["accuracy"].append(acc_sum / count)
                history["gates"].append(model.gates().flatten().tolist())
                history["elapsed"].append(time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{acc_sum / count:.2f}")
                loss_sum, acc_sum, count = 0.0, 0.0, 0
    history.update(seconds=time.perf_counter() - start, run=run,
                   n_parameters=sum(p.numel() for p in model.parameters()), torch=str(torch.__version__))
    return model.eval(), history


# ----------------------------------------------------------------- evaluation
def _cell_seed(seed: int, length: int, depth: float) -> int:
    """One generator seed per (length, depth) cell: a cell's sequences do not depend on the others asked for."""
    return (seed * 1_000_003 + length * 7919 + round(depth * 1_000_000)) % (2 ** 63)


@torch.no_grad()
def _answer_hits(model: nn.Module, tokens: Tensor, n_digits: int) -> Tensor:
    """Read ``tokens`` ``(B, L)`` segment by segment (:meth:`stream`), keeping only the logits of
    the last ``n_digits + 1`` positions; returns the hits ``(B, n_digits)`` on the answer digits."""
    tail = None
    for logits in model.stream(tokens.split(model.segment_length, dim=1)):  # (B, S, vocab) each
        tail = logits if tail is None else torch.cat([tail, logits], dim=1)
        tail = tail[:, -(n_digits + 1):]
    pred = tail[:, :-1].argmax(-1)  # (B, n): predictions made at positions L-n-1 .. L-2
    return pred.cpu() == tokens[:, -n_digits:].cpu()


def evaluate_passkey(model: InfiniTransformer, lengths: Sequence[int], *,
                     depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), n_per_cell: int = 32,
                     n_digits: int | None = None, seed: int = 0, progress: bool = True,
                     device: str | torch.device | None = None) -> dict:
    """Passkey accuracy of ``model`` for every length and depth of the key.

    Each cell draws ``n_per_cell`` sequences (:func:`~longctx_lib.tasks.passkey_batch` with
    ``depth``: the key block starts at ``round(depth * (length - 2 * (n_digits + 1)))``) from
    a generator seeded by ``seed``, the length and the depth alone, so a cell's sequences are
    the same whatever else is asked, and the same for every model. The model reads them
    with :meth:`~longctx_lib.infini.InfiniTransformer.stream` under ``torch.no_grad``, one
    segment at a time, at most 64 sequences at once, keeping only the last logits: memory
    does not grow with the length.

    Args:
        lengths: sequence lengths in tokens, each at least ``2 * (n_digits + 1)``.
        depths: relative positions of the key in ``[0, 1]`` (0: the start, 1: just before the question).
        n_digits: digits per passkey; ``None`` takes the model's run (``model.passkey_run``).
        device: where to run; ``None`` keeps the model where it is (it is moved otherwise).

    Returns:
        ``{"lengths", "depths", "accuracy", "per_digit", "key_start", "straddles",
        "key_in_question_segment", "n_per_cell", "n_digits", "seed", "seconds"}``. The grids
        are lists (one per length) of lists (one per depth): ``accuracy`` of whole passkeys,
        ``per_digit`` of single digits (chance 0.1), the key's first token ``key_start``,
        ``straddles`` (the key block crosses a segment boundary) and
        ``key_in_question_segment`` (local attention can see the key from the question).
    """
    _check_model(model)
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence) or not lengths:
        raise ValueError(f"lengths must be a non-empty sequence of token counts; got {lengths!r}")
    if isinstance(depths, (str, bytes)) or not isinstance(depths, Sequence) or not depths:
        raise ValueError(f"depths must be a non-empty sequence of numbers in [0, 1]; got {depths!r}")
    for d in depths:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0:
            raise ValueError(f"depths must hold numbers in [0, 1]; got {d!r}")
    _check_int("n_per_cell", n_per_cell)
    _check_int("seed", seed, 0)
    check_bool(progress=progress)
    if n_digits is None:
        run = getattr(model, "passkey_run", None)
        if not isinstance(run, dict) or "n_digits" not in run:
            raise ValueError("n_digits is None but the model carries no passkey_run (built by build_passkey_model); "
                             "pass n_digits=")
        n_digits = run["n_digits"]
    _check_int("n_digits", n_digits)
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int) or length < 2 * (n_digits + 1):
            raise ValueError(f"lengths must hold integers >= {2 * (n_digits + 1)} (the key and the question, "
                             f"n_digits + 1 tokens each); got {length!r}")
    if device is not None:
        model.to(resolve_device(device))
    params = next(model.parameters(), None)
    where = params.device if params is not None else torch.device("cpu")
    seg = model.segment_length
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    out: dict = {k: [] for k in ("accuracy", "per_digit", "key_start", "straddles", "key_in_question_segment")}
    cells = [(length, d) for length in lengths for d in depths]
    bar = tqdm(cells, desc="passkey evaluation", disable=not progress, leave=False)
    try:
        for i, (length, depth) in enumerate(bar):
            if i % len(depths) == 0:
                for row in out.values():
                    row.append([])
            gen = torch.Generator().manual_seed(_cell_seed(seed, length, float(depth)))
            tokens, key = passkey_batch(n_per_cell, length, n_digits=n_digits, depth=float(depth), generator=gen)
            hits = torch.cat([_answer_hits(model, part.to(where), n_digits) for part in tokens.split(64)])
            first = int(key[0])
            out["accuracy"][-1].append(hits.all(dim=1).float().mean().item())
            out["per_digit"][-1].append(hits.float().mean().item())
            out["key_start"][-1].append(first)
            out["straddles"][-1].append(first // seg != (first + n_digits) // seg)
            out["key_in_question_segment"][-1].append(first // seg == (length - n_digits - 1) // seg)
            bar.set_postfix(length=length, depth=depth)
    finally:
        model.train(was_training)
    return {"lengths": list(lengths), "depths": [float(d) for d in depths], **out, "n_per_cell": n_per_cell,
            "n_digits": n_digits, "seed": seed, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------- checkpoints
def save_passkey(model: InfiniTransformer, history: dict, path: str | Path, *,
                 dtype: torch.dtype = torch.float16) -> Path:
    """Save ``model``'s weights (as ``dtype``), its run (``history["run"]``) and ``history``."""
    if not isinstance(model, InfiniTransformer):
        raise TypeError(f"model must be an InfiniTransformer; got {type(model).__name__}")
    if not isinstance(history, dict) or not isinstance(history.get("run"), dict):
        raise TypeError("history must be a dict with the run under 'run' (as returned by train_passkey)")
    return save_weights(model, path, dtype, run=_check_run(history["run"]), history=history)


def load_passkey(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[InfiniTransformer, dict]:
    """Load a model saved by :func:`save_passkey` (float32, eval mode, on ``device``) and its history."""
    ckpt = read_checkpoint(path, REGENERATE_COMMAND)
    model = build_passkey_model(ckpt["run"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(resolve_device(device)).eval(), ckpt["history"]


def load_or_train_passkey(run: str, *, device: str | torch.device = "cpu", progress: bool = True,
                          train_if_missing: bool = True, checkpoint_dir: str | Path | None = None
                          ) -> tuple[InfiniTransformer, dict]:
    """The model of run ``run`` (a name of :data:`PASSKEY_RUNS`): loaded from
    ``checkpoint_dir/<run>.pt`` when it was trained with ``PASSKEY_RUNS[run]``, else trained.

    Training (:func:`train_passkey`, several minutes on a CPU) happens with a warning when
    the file is missing or was trained with another configuration, and only if
    ``train_if_missing``; otherwise a ``FileNotFoundError`` (missing) or ``RuntimeError``
    (stale) names :data:`REGENERATE_COMMAND`. A missing file is written after training; a
    stale one is never overwritten. ``checkpoint_dir`` defaults to :data:`CHECKPOINT_DIR`.
    """
    if not isinstance(run, str):
        raise TypeError(f"run must be a name of PASSKEY_RUNS (a str); got {type(run).__name__}")
    if run not in PASSKEY_RUNS:
        raise ValueError(f"run must be one of {sorted(PASSKEY_RUNS)}; got {run!r}")
    check_bool(progress=progress, train_if_missing=train_if_missing)
    device = resolve_device(device)
    spec = copy.deepcopy(PASSKEY_RUNS[run])
    directory = check_path(checkpoint_dir, "checkpoint_dir") if checkpoint_dir is not None else CHECKPOINT_DIR
    path = directory / f"{run}.pt"
    if not train_if_missing:
        model, history = load_passkey(path, device=device)
        if not same_config(history.get("run", {}), spec):
            raise RuntimeError(f"{path} was trained with another configuration than PASSKEY_RUNS[{run!r}]; "
                               f"regenerate with: {REGENERATE_COMMAND}")
        return model, history
    return load_else_train(
        path,
        load=lambda p: load_passkey(p, device=device),
        matches=lambda loaded: same_config(loaded[1].get("run", {}), spec),
        train=lambda: train_passkey(spec, progress=progress, device=device),
        save=lambda trained, p: save_passkey(*trained, p),
        retrain=False,
        regenerate=REGENERATE_COMMAND,
    )
