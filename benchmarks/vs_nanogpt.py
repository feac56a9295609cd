"""scaleflow's trainer against nanoGPT's train.py, whole process, same model, data and batch.

    python benchmarks/vs_nanogpt.py --nanogpt ~/src/nanoGPT [--steps 300] [--repeats 3]

Nothing of nanoGPT is in this repository: point --nanogpt at your own clone (unmodified; its
train.py, model.py and configurator.py are run from a temporary folder holding links to them
and the byte data, so the clone is not written to). Both train the same GPT (4 layers, d_model
128, 4 heads, LayerNorm, GELU, learned positions, tied embeddings, no biases, no dropout) on
the same bytes (the Python standard library's source, scaleflow's default corpus: 90% train,
as scaleflow splits it), batch 16 x 128, `--steps` AdamW steps with cosine decay, fp32 on the
CPU, evaluation and checkpoints kept to the minimum each allows (nanoGPT evaluates once at
step 0 on one batch; scaleflow evaluates at the end on 16 sequences). Prints the wall time of
each process (median of --repeats) and the ratio nanoGPT / scaleflow (target: at least 1.0).
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = {"n_layer": 4, "d_model": 128, "n_head": 4, "seq_len": 128}


def _byte_data(folder: Path) -> None:
    """nanoGPT's data layout for scaleflow's default corpus: train.bin, val.bin (uint16), meta.pkl."""
    import numpy as np

    from scaleflow.config import compose_run
    from scaleflow.data import load_corpus

    cfg = compose_run([])
    corpus = load_corpus(cfg.data, 256)
    folder.mkdir(parents=True, exist_ok=True)
    for name, tokens in (("train", corpus.train), ("val", corpus.val)):
        np.asarray(tokens, dtype=np.uint16).tofile(folder / f"{name}.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 256}, f)


def _timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def nanogpt_command(steps: int, out_dir: Path) -> list[str]:
    m = MODEL
    return [sys.executable, "train.py", "--dataset=scaleflow_bytes", f"--n_layer={m['n_layer']}",
            f"--n_head={m['n_head']}", f"--n_embd={m['d_model']}", f"--block_size={m['seq_len']}", "--batch_size=16",
            "--gradient_accumulation_steps=1", f"--max_iters={steps}", f"--lr_decay_iters={steps}",
            "--warmup_iters=15", "--learning_rate=0.003", "--min_lr=0.0003", "--dropout=0.0", "--bias=False",
            "--eval_interval=1000000", "--eval_iters=1", "--log_interval=20", "--always_save_checkpoint=False",
            "--device=cpu", "--dtype=float32", "--compile=False", "--wandb_log=False", f"--out_dir={out_dir}"]


def scaleflow_command(steps: int, run_dir: Path) -> list[str]:
    m = MODEL
    return [sys.executable, "-m", "scaleflow.cli", "train", f"run_dir={run_dir}", f"model.n_layer={m['n_layer']}",
            f"model.d_model={m['d_model']}", f"model.n_head={m['n_head']}", f"model.seq_len={m['seq_len']}",
            "model.norm=layernorm", "model.pos=learned", "model.mlp=gelu", "model.tie_embeddings=true",
            "model.bias=false", "trainer.batch_size=16", f"trainer.steps={steps}", "trainer.log_every=20",
            "trainer.eval_every=1000000", "trainer.eval_sequences=16", "trainer.checkpoint_every=1000000",
            "device=cpu", "optim.lr=3e-3", "schedule=cosine", "schedule.warmup_steps=15"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", required=True, type=Path, help="a clone of github.com/karpathy/nanoGPT")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    clone = args.nanogpt.expanduser().resolve()
    missing = [f for f in ("train.py", "model.py", "configurator.py") if not (clone / f).is_file()]
    if missing:
        raise SystemExit(f"vs_nanogpt: {clone} is not a nanoGPT clone (no {', '.join(missing)})")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for f in ("train.py", "model.py", "configurator.py"):
            (work / f).symlink_to(clone / f)
        _byte_data(work / "data" / "scaleflow_bytes")
        theirs, ours = [], []
        for i in range(args.repeats):  # alternate, so that a drift in machine load hits both
            theirs.append(_timed(nanogpt_command(args.steps, work / f"ngpt{i}"), work))
            ours.append(_timed(scaleflow_command(args.steps, work / f"sf{i}"), work))
    t, o = statistics.median(theirs), statistics.median(ours)
    print(f"{args.steps} steps, batch 16 x 128, 4 x 128 GPT, CPU fp32, whole process, median of {args.repeats}:")
    print(f"  nanoGPT train.py {t:.1f} s  {[round(x, 1) for x in theirs]}")
    print(f"  scaleflow train  {o:.1f} s  {[round(x, 1) for x in ours]}")
    print(f"  ratio nanoGPT / scaleflow: {t / o:.2f} (target >= 1.0)")


if __name__ == "__main__":
    main()
