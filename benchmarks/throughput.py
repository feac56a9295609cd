"""Training throughput: scaleflow's trainer beside a bare PyTorch loop, same model and batch.

    python benchmarks/throughput.py [--device cpu|cuda] [--steps 60] [--sizes small,medium,large]

For each model size it trains with `scaleflow.train.train` (tokens/s read from its
metrics.jsonl, warm-up steps excluded) and with a bare loop (the same GPT, AdamW, clipping
and batch from the same corpus, nothing else), and prints tokens/s, achieved FLOP/s
(6 N_with_head per token) and the ratio scaleflow / bare. Target: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scaleflow.config import compose_run
from scaleflow.data import batch_offsets, gather, load_corpus
from scaleflow.files import read_jsonl
from scaleflow.model import GPT
from scaleflow.plan import plan_run
from scaleflow.train import build_optimizer, pick_device, train

SIZES = {
    "cpu": {
        "small": ["model.n_layer=2", "model.d_model=64", "model.n_head=4"],
        "medium": ["model.n_layer=4", "model.d_model=128", "model.n_head=4"],
        "large": ["model.n_layer=6", "model.d_model=256", "model.n_head=8"],
    },
    "cuda": {
        "10M": ["model.n_layer=6", "model.d_model=384", "model.n_head=6", "model.seq_len=1024"],
        "124M": ["model=gpt2_124m", "data=tokens"],
        "350M": ["model=gpt2_124m", "model.n_layer=24", "model.d_model=1024", "model.n_head=16", "data=tokens"],
    },
}


def bare_loop(cfg, steps: int, warmup: int) -> float:
    """Tokens/s of a plain forward/backward/step loop over the same batches."""
    device = pick_device(cfg.device)
    corpus = load_corpus(cfg.data, cfg.model.vocab_size)
    torch.manual_seed(cfg.seed)
    from omegaconf import OmegaConf

    model = GPT(OmegaConf.to_object(cfg.model)).to(device)
    optimizer = build_optimizer(model, cfg, device)
    bf16 = device.type == "cuda"
    seq, batch = cfg.model.seq_len, cfg.trainer.batch_size
    for step in range(steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = gather(corpus.train, batch_offsets(cfg.seed, step, batch, len(corpus.train), seq), seq)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x.to(device), y.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (steps - warmup) * batch * seq / (time.perf_counter() - start)


def scaleflow_loop(cfg, steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp))
        lines = [l for l in read_jsonl(Path(tmp) / "metrics.jsonl") if l["step"] > warmup and "tokens_per_s" in l]
    # Log intervals have equal length, so the mean of their rates is the rate of their union.
    return statistics.fmean(l["tokens_per_s"] for l in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--sizes", default="")
    parser.add_argument("--data", nargs="*", default=[], help="extra overrides, e.g. data.paths=[train.bin]")
    args = parser.parse_args()
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    warmup = 10
    if kind == "cuda" and not args.data:  # no token file given: random GPT-2-vocab tokens
        import numpy as np

        path = Path(tempfile.gettempdir()) / "scaleflow_bench_tokens.bin"
        if not path.exists():
            np.random.default_rng(0).integers(0, 50257, 50_000_000, dtype=np.uint16).tofile(path)
        args.data = [f"data.paths=[{path}]", "trainer.batch_size=16", "trainer.precision=bf16", "trainer.compile=true"]
    print(f"device {args.device} ({torch.cuda.get_device_name() if kind == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'size':>8} {'params':>10} {'scaleflow tok/s':>16} {'bare tok/s':>12} {'FLOP/s':>10} {'ratio':>6}")
    for name, overrides in SIZES[kind].items():
        if args.sizes and name not in args.sizes.split(","):
            continue
        cfg = compose_run(overrides + args.data + [
            f"device={args.device}", f"trainer.steps={args.steps}", "trainer.log_every=5",
            "trainer.eval_every=100000", "trainer.eval_sequences=1", "trainer.checkpoint_every=100000",
        ])
        plan = plan_run(cfg)
        bare = bare_loop(cfg, args.steps, warmup)
        ours = scaleflow_loop(cfg, args.steps, warmup)
        flops = ours * plan.counts.flops_6n_with_head
        print(f"{name:>8} {plan.counts.params_with_head:>10,} {ours:>16,.0f} {bare:>12,.0f} {flops:>10.3g} {ours / bare:>6.3f}")


if __name__ == "__main__":
    main()
