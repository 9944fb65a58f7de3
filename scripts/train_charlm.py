"""Train chapter 4's character-level language models and write their checkpoints.

The regeneration command for ``checkpoints/charlm/`` (full attention against LSH
attention on the standard library's source; see ``longctx_lib/charlm.py``)::

    python scripts/train_charlm.py                          # every run of CHARLM_RUNS
    python scripts/train_charlm.py --only lsh-1k --steps 20 --out /tmp/charlm
    python scripts/train_charlm.py --eval-only              # only print the table

Each run is trained from scratch and saved as ``<out>/<name>.pt`` (float16 weights,
config, history); ``<out>/histories.json`` collects the histories, the validation bits
per character of the saved (float16) weights, and the table, which is also printed.
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

import longctx_lib.charlm as charlm  # noqa: E402

REPLAY_TOKENS = 16384
"""Characters that tests/test_charlm.py scores again to check a shipped checkpoint (a few seconds)."""


def format_table(rows: dict[str, dict]) -> str:
    head = (f"{'run':>8} {'attention':>9} {'context':>7} {'batch':>5} {'steps':>5} {'tokens':>9} "
            f"{'train':>6} {'val':>6} {'val(final)':>10} {'minutes':>7} {'MB':>5}")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:>8} {r['attention']:>9} {r['context']:>7} {r['batch']:>5} {r['steps']:>5} "
                     f"{r['tokens'] / 1e6:>8.2f}M {r['train_bpc']:6.3f} {r['validation_bpc']:6.3f} "
                     f"{r['final_validation_bpc']:10.3f} {r['wall_seconds'] / 60:7.1f} {r['megabytes']:5.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=list(charlm.CHARLM_RUNS), choices=list(charlm.CHARLM_RUNS),
                        help="runs to train (default: all)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps for every run (default: each run's own; a checkpoint trained "
                             "with other steps is not loaded by load_or_train_char_lm)")
    parser.add_argument("--out", type=Path, default=REPO / "checkpoints" / "charlm",
                        help="output folder (default: checkpoints/charlm)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--eval-only", action="store_true",
                        help="train nothing: evaluate the checkpoints in --out and rewrite histories.json")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be positive")
    torch.set_num_threads(args.threads)

    for name in [] if args.eval_only else args.only:
        run = copy.deepcopy(charlm.CHARLM_RUNS[name])
        if args.steps is not None:
            run["steps"] = args.steps
        model, history = charlm.train_char_lm_run(run, progress=not args.no_progress)
        history["name"] = name
        path = charlm.save_char_lm(model, history, args.out / f"{name}.pt")
        print(f"{name}: {history['wall_seconds'] / 60:.1f} min, validation {history['validation_bpc'][-1]:.3f} "
              f"bits/char -> {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)

    # Evaluate every checkpoint present in the folder (so --only refreshes a part of the table).
    summary_path = args.out / "histories.json"
    summary = {"runs": {}}
    rows = {}
    for name in charlm.CHARLM_RUNS:
        path = args.out / f"{name}.pt"
        if not path.is_file():
            continue
        model, history = charlm.load_char_lm(path)
        run = history["run"]
        entry = dict(history)
        # the saved (float16) weights on the training curve's characters, and on a few for a quick replay
        entry["checkpoint_validation_bpc"] = charlm.evaluate_char_lm(model, run)
        replay = charlm.evaluate_char_lm(model, run, n_tokens=REPLAY_TOKENS)
        entry["replay"] = {"n_tokens": REPLAY_TOKENS, "bpc": replay}
        entry["megabytes"] = path.stat().st_size / 1e6
        entry["matches_current_run"] = run == charlm.CHARLM_RUNS[name]
        summary["runs"][name] = entry
        rows[name] = {"attention": run["model"]["attention"], "context": run["context"], "batch": run["batch"],
                      "steps": history["step"][-1], "tokens": history["tokens"][-1],
                      "train_bpc": history["train_bpc"][-1], "validation_bpc": history["validation_bpc"][-1],
                      "final_validation_bpc": history["final_validation_bpc"],
                      "wall_seconds": history["wall_seconds"], "megabytes": entry["megabytes"]}
    summary["regenerate"] = charlm.REGENERATE_COMMAND
    used = sys.argv[1:] if argv is None else argv
    summary["last_command"] = " ".join(["python scripts/train_charlm.py", *used])
    summary["torch"] = torch.__version__
    summary["python"] = sys.version.split()[0]
    summary["threads"] = args.threads
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    print("\nbits per character (train: mean of the last evaluation interval; val: the run's evaluation "
          "characters; val(final): the first final_eval_tokens validation characters)")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
