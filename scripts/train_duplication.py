"""Train the duplication-task models of chapter 2 and write their checkpoints.

The regeneration command for ``checkpoints/duplication/`` (Reformer paper, Table 2, at
toy scale; see ``longctx_lib/duplication.py``)::

    python scripts/train_duplication.py                 # all four: full, lsh1, lsh2, lsh4
    python scripts/train_duplication.py --only full lsh4 --steps 200 --out /tmp/dup
    python scripts/train_duplication.py --eval-only     # only print the table

Each model is trained from scratch with ``DUPLICATION_CONFIG`` and saved as
``<out>/<name>.pt`` (float32 weights, config, history); ``<out>/histories.json`` collects
the training curves, the wall times and the evaluation table (train mode x eval mode),
which is also printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from longctx_lib.duplication import (  # noqa: E402
    DUPLICATION_CONFIG,
    MODE_NAMES,
    REGENERATE_COMMAND,
    _check_mode,
    checkpoint_name,
    evaluate_duplication,
    load_checkpoint,
    save_checkpoint,
    train_duplication,
)

EVAL_MODES = ("full", 8, 4, 2, 1)


def _label(mode: str | int) -> str:
    return "full" if mode == "full" else f"LSH-{mode}"


def format_table(table: dict[str, dict]) -> str:
    """Rows: trained with; columns: evaluated with (percent)."""
    corner = "train \\ eval"
    head = f"{corner:>12} " + " ".join(f"{_label(m):>7}" for m in EVAL_MODES)
    lines = [head]
    for name, row in table.items():
        lines.append(f"{name:>12} " + " ".join(f"{100 * row[str(m)]:7.1f}" for m in EVAL_MODES))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=list(MODE_NAMES.values()),
                        help="models to train: full, lsh1, lsh2, lsh4 (default: all four)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps (default: DUPLICATION_CONFIG's {DUPLICATION_CONFIG['steps']})")
    parser.add_argument("--out", type=Path, default=REPO / "checkpoints" / "duplication",
                        help="output folder (default: checkpoints/duplication)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--eval-sequences", type=int, default=256, help="sequences per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--eval-only", action="store_true",
                        help="train nothing: evaluate the checkpoints in --out and rewrite histories.json")
    args = parser.parse_args(argv)
    modes = [_check_mode(m, "--only") for m in args.only]
    torch.set_num_threads(args.threads)
    config = dict(DUPLICATION_CONFIG)
    if args.steps is not None:
        if args.steps < 1:
            parser.error("--steps must be positive")
        config["steps"] = args.steps

    summary_path = args.out / "histories.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary.setdefault("models", {})
    for mode in [] if args.eval_only else modes:
        name = checkpoint_name(mode)
        model, history = train_duplication(mode, config=config, seed=args.seed, progress=not args.no_progress)
        path = save_checkpoint(model, history, args.out / f"{name}.pt")
        print(f"{name}: {history['seconds']:.0f} s, final copy accuracy (train batches) "
              f"{history['accuracy'][-1]:.3f} -> {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)

    # Evaluate every checkpoint present in the folder (so --only refreshes a part of the table).
    table = {}
    for name in MODE_NAMES.values():
        path = args.out / f"{name}.pt"
        if not path.is_file():
            continue
        model, history = load_checkpoint(path)
        acc = evaluate_duplication(model, EVAL_MODES, n_sequences=args.eval_sequences)
        table[name] = {str(m): a for m, a in acc.items()}
        summary["models"][name] = {
            "train_mode": model.train_mode,
            "config": model.config,
            "seconds": history.get("seconds"),
            "history": {k: history[k] for k in ("step", "loss", "accuracy")},
            "eval": table[name],
        }
    summary["config"] = config
    summary["eval_sequences"] = args.eval_sequences
    summary["regenerate"] = REGENERATE_COMMAND
    used = sys.argv[1:] if argv is None else argv
    summary["last_command"] = " ".join(["python scripts/train_duplication.py", *used])
    summary["torch"] = torch.__version__
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    print("\ncopy accuracy (%), rows: trained with, columns: evaluated with")
    print(format_table(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
