"""WSD decay branches against cosine runs of the same length, both with a tuned peak LR.

    python benchmarks/wsd_vs_cosine.py [STUDY] [--lr-grid 1,2,4] [--study-dir DIR]

For each peak-LR multiplier of --lr-grid it runs the decay-branch study (default
decay_branches_cpu; finished runs are reused) and, for every branch, a cosine run of the same
model, seed, warmup, length and peak LR (final LR --cosine-final of the peak). Per
(model, budget) it keeps each schedule's best loss over the grid (so both are tuned to the
length) and prints them, their relative gap, and the branched study's compute against
independent runs.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from scaleflow.branches import accounting
from scaleflow.sweep import decay_branches
from scaleflow.config import compose_study, typed_config
from scaleflow.files import read_json
from scaleflow.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", default="decay_branches_cpu")
    parser.add_argument("--study-dir", default="runs/bench_wsd_vs_cosine")
    parser.add_argument("--cosine-final", type=float, default=0.1, help="cosine final LR as a fraction of peak")
    parser.add_argument("--lr-grid", default="1,2,4", help="peak-LR multipliers of the study's optim.lr")
    args = parser.parse_args()
    best: dict[tuple[int, int], dict[str, tuple[float, float]]] = {}
    for mult in [float(m) for m in args.lr_grid.split(",")]:
        base = compose_study(args.study, [f"study_dir={args.study_dir}/lr_x{mult:g}"])
        lr = base.optim.lr * mult
        cfg = compose_study(args.study, [f"study_dir={args.study_dir}/lr_x{mult:g}", f"optim.lr={lr}"])
        started = time.time()
        report = decay_branches(cfg)
        acc = accounting(report.specs)
        print(f"lr {lr:.3g}: branched study {time.time() - started:.0f} s, {acc.branched_flops:.3g} FLOPs vs "
              f"{acc.independent_flops:.3g} independent (ratio {acc.ratio:.3f})")
        for spec in report.specs:
            if spec.kind != "branch":
                continue
            wsd = read_json(Path(cfg.study_dir) / spec.run_id / "summary.json")["val_loss"]
            cosine_cfg = copy.deepcopy(spec.config)
            cosine_cfg["schedule"].update(name="cosine", final_lr_fraction=args.cosine_final)
            cosine_dir = Path(cfg.study_dir) / f"cosine_{args.cosine_final:g}" / spec.run_id
            cosine = (read_json(cosine_dir / "summary.json") or train(typed_config(cosine_cfg), cosine_dir))["val_loss"]
            entry = best.setdefault((spec.params, spec.tokens), {})
            for name, loss in (("wsd", wsd), ("cosine", cosine)):
                if name not in entry or loss < entry[name][0]:
                    entry[name] = (loss, lr)
    print(f"{'model':>8} {'tokens':>9} {'WSD loss':>9} {'at lr':>7} {'cosine':>8} {'at lr':>7} {'gap %':>7}")
    gaps = []
    for (params, tokens), entry in sorted(best.items()):
        (wsd, wsd_lr), (cosine, cosine_lr) = entry["wsd"], entry["cosine"]
        gaps.append((wsd - cosine) / cosine)
        print(f"{params:>8,} {tokens:>9,} {wsd:>9.4f} {wsd_lr:>7.3g} {cosine:>8.4f} {cosine_lr:>7.3g} {100 * gaps[-1]:>+7.2f}")
    print(f"mean gap {100 * sum(gaps) / len(gaps):+.2f}%, range {100 * min(gaps):+.2f}% to {100 * max(gaps):+.2f}% "
          "(negative: WSD better)")


if __name__ == "__main__":
    main()
