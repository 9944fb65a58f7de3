"""Train chapter 5's passkey-retrieval models (Infini-attention) and write their checkpoints.

The regeneration command for ``checkpoints/passkey/`` (linear against delta memory, and
the gate learning-rate ablation; see ``longctx_lib/passkey.py``)::

    python scripts/train_passkey.py                            # every run of PASSKEY_RUNS
    python scripts/train_passkey.py --only delta --steps 20 --out /tmp/passkey
    python scripts/train_passkey.py --eval-only                # only evaluate and print the tables

Each run is trained from scratch and saved as ``<out>/<name>.pt`` (float16 weights, run,
history). Then every checkpoint in ``<out>`` is loaded back (the float16 weights) and
evaluated at ``EVAL_MULTIPLES`` times its training length and five depths of the key;
``<out>/histories.json`` collects the histories, the evaluations and the tables, which
are also printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import longctx_lib.passkey as passkey  # noqa: E402

EVAL_PER_CELL = 32
"""Sequences per (length, depth) cell of the stored evaluation."""


def format_tables(summary: dict) -> str:
    multiples = list(passkey.EVAL_MULTIPLES)
    columns = " ".join(f"{f'{m}x':>5}" for m in multiples)
    head = (f"{'run':>13} {'rule':>6} {'gate_lr':>7} {'steps':>5} {'train':>6} {columns} "
            f"{'gates (min-max)':>15} {'min':>5} {'KB':>4}")
    title = ("accuracy of whole passkeys: train = last record's train batches; Nx = mean over the depths "
             f"at N times the training length ({EVAL_PER_CELL} sequences per depth)")
    lines = [title, head, "-" * len(head)]
    for name, e in summary["runs"].items():
        run, ev = e["run"], e["evaluation"]
        means = [sum(row) / len(row) for row in ev["accuracy"]]
        gates = e["gates"][-1]
        lines.append(f"{name:>13} {run['rule']:>6} {run['gate_lr']:7.0e} {e['step'][-1]:>5} {e['accuracy'][-1]:6.3f} "
                     + " ".join(f"{m:5.2f}" for m in means)
                     + f" {f'{min(gates):.2f}-{max(gates):.2f}':>15} {e['seconds'] / 60:5.1f} {e['kilobytes']:4.0f}")
    for name, e in summary["runs"].items():
        ev = e["evaluation"]
        lines += ["", (f"{name}: accuracy by depth of the key (rows: length in tokens; * the key block "
                       "straddles a segment boundary; L the key is in the question's segment)"),
                  f"{'length':>7} " + " ".join(f"{d:>7.2f}" for d in ev["depths"])]
        for length, acc, cross, local in zip(ev["lengths"], ev["accuracy"], ev["straddles"],
                                             ev["key_in_question_segment"]):
            cells = [f"{a:5.2f}{'*' if s else ''}{'L' if q else ''}" for a, s, q in zip(acc, cross, local)]
            lines.append(f"{length:>7} " + " ".join(f"{c:>7}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=list(passkey.PASSKEY_RUNS), choices=list(passkey.PASSKEY_RUNS),
                        help="runs to train (default: all)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps for every run (default: each run's own; a checkpoint trained "
                             "with other steps is not loaded by load_or_train_passkey)")
    parser.add_argument("--out", type=Path, default=REPO / "checkpoints" / "passkey",
                        help="output folder (default: checkpoints/passkey)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine one was faster)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--eval-only", action="store_true",
                        help="train nothing: evaluate the checkpoints in --out and rewrite histories.json")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be positive")
    torch.set_num_threads(args.threads)

    for name in [] if args.eval_only else args.only:
        run = copy.deepcopy(passkey.PASSKEY_RUNS[name])
        model, history = passkey.train_passkey(run, steps=args.steps, progress=not args.no_progress)
        history["name"] = name
        path = passkey.save_passkey(model, history, args.out / f"{name}.pt")
        print(f"{name}: {history['seconds'] / 60:.1f} min, train accuracy {history['accuracy'][-1]:.3f}, "
              f"gates {[round(g, 2) for g in history['gates'][-1]]} -> {path} ({path.stat().st_size / 1e3:.0f} KB)",
              flush=True)

    # Evaluate every checkpoint present in the folder (so --only refreshes a part of the tables).
    summary: dict = {"runs": {}}
    for name in passkey.PASSKEY_RUNS:
        path = args.out / f"{name}.pt"
        if not path.is_file():
            continue
        model, history = passkey.load_passkey(path)
        run = history["run"]
        lengths = [m * run["train_length"] for m in passkey.EVAL_MULTIPLES]
        evaluation = passkey.evaluate_passkey(model, lengths, n_per_cell=EVAL_PER_CELL, seed=0,
                                              progress=not args.no_progress)
        print(f"{name}: evaluated in {evaluation['seconds']:.0f} s", flush=True)
        entry = dict(history)
        entry["evaluation"] = evaluation
        entry["kilobytes"] = path.stat().st_size / 1e3
        entry["matches_current_run"] = run == passkey.PASSKEY_RUNS[name]
        summary["runs"][name] = entry
    summary["regenerate"] = passkey.REGENERATE_COMMAND
    used = sys.argv[1:] if argv is None else argv
    summary["last_command"] = " ".join(["python scripts/train_passkey.py", *used])
    summary["torch"] = torch.__version__
    summary["python"] = sys.version.split()[0]
    summary["threads"] = args.threads
    summary["eval_per_cell"] = EVAL_PER_CELL
    table = format_tables(summary) if summary["runs"] else "(no checkpoints)"
    summary["table"] = table
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "histories.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
