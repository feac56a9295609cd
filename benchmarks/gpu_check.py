"""The GPU check: one short script of figures on one GPU (run by benchmarks/gpu_check.sh).

    python benchmarks/gpu_check.py --out gpu_check.json            # on a CUDA machine, < 8 min
    python benchmarks/gpu_check.py --smoke --out /tmp/smoke.json   # on a CPU: tiny, the same code paths

1. Throughput at GPT-2 small (124M) and medium (350M) shapes: bf16, torch.compile, sequences of
   1024 tokens, fused AdamW, random GPT-2-vocabulary tokens; tokens/s and MFU from the trainer's
   own metrics (median over the logged intervals after compilation). MFU counts 6 N_with_head
   FLOPs per token (the `mfu` field) and also PaLM's 6 N + 12 L d T (`mfu_palm`, attention
   included), against the GPU's dense bf16 peak (scaleflow/train.py: PEAK_FLOPS).
2. The first rungs of `isoflop_gpu`: the two smallest models of its smallest budget, planned by
   the study's own planner, each trained for `--rung-steps` steps (not to the end): tokens/s,
   MFU, and the loss falling.
3. Data parallel, when 2 or more GPUs are present: the 124M shape on every GPU
   (trainer.world_size), tokens/s against one GPU.

Writes one JSON object of figures; prints it too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

SHAPES = {
    "124M": ["model=gpt2_124m"],
    "350M": ["model=gpt2_124m", "model.n_layer=24", "model.d_model=1024", "model.n_head=16"],
}
SMOKE_SHAPES = {
    "tiny": ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=64", "model.vocab_size=512"],
}


def _tokens_file(vocab: int) -> Path:
    import numpy as np

    path = Path(tempfile.gettempdir()) / f"scaleflow_gpu_check_tokens_{vocab}.bin"
    if not path.exists():
        np.random.default_rng(0).integers(0, min(vocab, 50257), 20_000_000, dtype=np.uint16).tofile(path)
    return path


def _train(overrides: list[str], skip: int) -> dict:
    """Train one run in a temporary directory; its throughput, MFU and first/last loss."""
    from scaleflow.config import compose_run
    from scaleflow.files import read_jsonl
    from scaleflow.train import train

    cfg = compose_run(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        summary = train(cfg, Path(tmp))
        lines = [line for line in read_jsonl(Path(tmp) / "metrics.jsonl") if "tokens_per_s" in line]
    timed = lines[skip:] or lines
    rate = statistics.median(line["tokens_per_s"] for line in timed)
    mfu = [line["mfu"] for line in timed if line.get("mfu") is not None]
    losses = [line["train_loss"] for line in lines if line.get("train_loss") is not None]
    m = cfg.model
    palm = 12 * m.n_layer * m.d_model * m.seq_len  # attention FLOPs per token (PaLM's MFU)
    flops_token = summary.get("flops", 0) / max(summary.get("tokens", 1), 1)
    return {"tokens_per_s": rate, "mfu": statistics.median(mfu) if mfu else None,
            "mfu_palm": statistics.median(mfu) * (flops_token + palm) / flops_token if mfu and flops_token else None,
            "params_with_head": summary.get("params_with_head"), "steps": summary.get("steps"),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "wall_s": round(time.time() - started, 1)}


def throughput(smoke: bool, steps: int) -> dict:
    out = {}
    for name, shape in (SMOKE_SHAPES if smoke else SHAPES).items():
        vocab = 512 if smoke else 50304
        device = ["device=cpu", "trainer.batch_size=4"] if smoke else [
            "device=cuda", "trainer.precision=bf16", "trainer.compile=true",
            f"trainer.batch_size={16 if name == '124M' else 8}"]
        out[name] = _train(shape + device + [
            "data=tokens", f"data.paths=[{_tokens_file(vocab)}]", f"trainer.steps={steps}", "trainer.log_every=5",
            "trainer.eval_every=1000000", "trainer.eval_sequences=1", "trainer.checkpoint_every=1000000"],
            skip=0 if smoke else 4)  # the first intervals include compilation
    return out


def isoflop_rungs(smoke: bool, steps: int) -> list[dict]:
    """The two smallest models of the study's smallest budget, `steps` steps each."""
    from scaleflow.config import compose_study
    from scaleflow.plan import isoflop

    overrides = [f"data.paths=[{_tokens_file(512 if smoke else 50304)}]"]
    if smoke:
        overrides += ["study.budgets=[1e9]", "study.widths=[32,64]", "study.depths=[1]", "study.aspect_min=0",
                      "study.aspect_max=null", "study.head_size=16", "study.min_steps=1", "model.seq_len=64",
                      "model.vocab_size=512", "trainer.batch_size=4", "trainer.grad_accum=1", "device=cpu"]
    cfg = compose_study("isoflop_gpu", overrides)
    smallest = min(float(b) for b in cfg.study.budgets)
    specs = sorted((s for s in isoflop(cfg) if s.budget == smallest), key=lambda s: s.params)[:2]
    rungs = []
    for spec in specs:
        m, t = spec.config["model"], spec.config["trainer"]
        shape = [f"model.{k}={m[k]}" for k in ("n_layer", "d_model", "n_head", "seq_len", "vocab_size", "qk_norm")]
        device = ["device=cpu"] if smoke else ["device=cuda", "trainer.precision=bf16", "trainer.compile=true"]
        result = _train(shape + device + overrides[:1] + [
            "data=tokens", f"trainer.batch_size={t['batch_size']}", f"trainer.grad_accum={t['grad_accum']}",
            f"optim.lr={spec.config['optim']['lr']}", f"trainer.steps={min(steps, spec.steps)}", "trainer.log_every=5",
            "trainer.eval_every=1000000", "trainer.eval_sequences=1", "trainer.checkpoint_every=1000000"],
            skip=0 if smoke else 4)
        rungs.append({"run_id": spec.run_id, "label": spec.label, "planned_steps": spec.steps, **result})
    return rungs


def data_parallel(steps: int) -> dict | None:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        return None
    base = SHAPES["124M"] + ["device=cuda", "trainer.precision=bf16", "trainer.compile=true", "data=tokens",
                             f"data.paths=[{_tokens_file(50304)}]", f"trainer.steps={steps}", "trainer.log_every=5",
                             "trainer.eval_every=1000000", "trainer.eval_sequences=1", "trainer.checkpoint_every=1000000"]
    one = _train(base + ["trainer.batch_size=16"], skip=4)
    many = _train(base + [f"trainer.batch_size={16 * n}", f"trainer.world_size={n}"], skip=4)
    return {"gpus": n, "one_gpu_tokens_per_s": one["tokens_per_s"], "all_gpus_tokens_per_s": many["tokens_per_s"],
            "scaling": many["tokens_per_s"] / (n * one["tokens_per_s"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: the same code paths, no figures")
    parser.add_argument("--steps", type=int, default=60, help="steps per throughput run")
    parser.add_argument("--rung-steps", type=int, default=100, help="steps per isoflop_gpu rung")
    args = parser.parse_args()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run with --smoke for the CPU smoke test")
    started = time.time()
    report = {"device": "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(), "torch": torch.__version__,
              "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    report["throughput"] = throughput(args.smoke, 10 if args.smoke else args.steps)
    report["isoflop_gpu_rungs"] = isoflop_rungs(args.smoke, 10 if args.smoke else args.rung_steps)
    report["data_parallel"] = None if args.smoke else data_parallel(args.steps)
    report["wall_s"] = round(time.time() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
