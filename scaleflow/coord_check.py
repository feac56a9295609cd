"""The muP coordinate check (docs/science.md section 7).

For each width and each parametrization (sp, mup) the GPT of the composed config is built with
d_model = width and trained a few AdamW steps on ONE fixed batch; forward hooks record the mean
|x| of each module's output at every step. Under muP every curve of mean |x| against width is
flat (up to noise); under SP the hidden activations grow with width once the weights have been
updated, because Adam's update of a fan-in-n matrix moves its output by ~ lr x n.

Step t in the results is the forward pass after t optimizer steps: t = 0 is the initialisation,
t = steps is after the last update. The LR is constant (no warmup, no schedule) and the
optimizer is `scaleflow.train.build_optimizer`, so muP's per-role LR and weight-decay rules and
the config's optim.* (betas, eps, weight decay, lr_mult_*, grad_clip) all apply. muP's base
width is the narrowest width unless given; the MLP width keeps the config's d_ff / d_model
ratio (4 for GELU by default), so every hidden dimension scales with the width. n_head comes
from the config, so the head size grows with the width (muP scores Q K^T / d_head for that).
With --seeds N the check repeats with N inits and N fixed batches and averages mean |x|.

Measured (docs/mup.md): muP curves are flat to within noise except a mild, systematic
shrink of the attention outputs between the narrowest widths (a finite-width effect: the ratio
from 256 to 512 is close to 1); SP's hidden activations grow roughly like width^1 to width^2.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Optional

from scaleflow.errors import ConfigError

PARAMETRIZATIONS = ("sp", "mup")
GROWTH_FLAG = 2.0  # a module whose mean |x| grows more than this from narrowest to widest


def parse_widths(text: str) -> list[int]:
    """'64,128,256' -> [64, 128, 256] (sorted, distinct, at least two)."""
    try:
        widths = sorted({int(w) for w in str(text).replace(" ", "").split(",") if w})
    except ValueError:
        raise ConfigError(f"--widths takes comma-separated integers, e.g. 64,128,256,512; got {text!r}") from None
    if len(widths) < 2:
        raise ConfigError(f"--widths needs at least two distinct widths, got {text!r}")
    if widths[0] < 1:
        raise ConfigError(f"widths must be positive, got {widths[0]}")
    return widths


def is_hidden(module: str) -> bool:
    """Modules between the embedding and the readout: blocks and the final norm."""
    return module.startswith("blocks.") or module == "norm_f"


@dataclass
class CoordCheck:
    widths: list[int]
    steps: int
    lr: float
    base_width: int
    parametrizations: tuple[str, ...]
    rows: list[dict] = field(default_factory=list)  # parametrization, width, step, module, mean_abs

    def modules(self) -> list[str]:
        return list(dict.fromkeys(r["module"] for r in self.rows))

    def value(self, parametrization: str, width: int, step: int, module: str) -> float:
        for r in self.rows:
            if (r["parametrization"], r["width"], r["step"], r["module"]) == (parametrization, width, step, module):
                return r["mean_abs"]
        raise KeyError((parametrization, width, step, module))

    def growth(self, step: Optional[int] = None) -> list[dict]:
        """Per (parametrization, module): mean |x| at the widest width / at the narrowest, at
        `step` (default: the last). Also the log-log slope over all widths."""
        step = self.steps if step is None else step
        out = []
        for p in self.parametrizations:
            for module in self.modules():
                ys = [self.value(p, w, step, module) for w in self.widths]
                narrow, wide = ys[0], ys[-1]
                growth = wide / narrow if narrow > 0 else math.inf
                out.append({"parametrization": p, "module": module, "step": step, "narrow": narrow, "wide": wide,
                            "growth": growth, "slope": _slope(self.widths, ys), "hidden": is_hidden(module)})
        return out

    def max_hidden_growth(self, parametrization: str, step: Optional[int] = None) -> tuple[float, str]:
        """The largest hidden-module growth (and its module) of one parametrization."""
        rows = [g for g in self.growth(step) if g["parametrization"] == parametrization and g["hidden"]]
        top = max(rows, key=lambda g: g["growth"])
        return top["growth"], top["module"]


def _slope(widths: list[int], ys: list[float]) -> float:
    """Least-squares slope of log(mean |x|) against log(width)."""
    if min(ys) <= 0:
        return math.nan
    xs = [math.log(w) for w in widths]
    ls = [math.log(y) for y in ys]
    mx, my = sum(xs) / len(xs), sum(ls) / len(ls)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ls)) / sum((x - mx) ** 2 for x in xs)


def width_configs(model_cfg, widths: list[int], base_width: int, parametrizations: Iterable[str]) -> dict:
    """{(parametrization, width): ModelConfig}; every one validated (ConfigError) up front."""
    for w in widths:
        if w < 1:
            raise ConfigError(f"widths must be positive, got {w}")
        if base_width > w:
            raise ConfigError(f"muP base width {base_width} is larger than width {w}; "
                              f"the base width must not exceed the narrowest width")
        if w % model_cfg.n_head:
            raise ConfigError(f"width {w} is not divisible by model.n_head={model_cfg.n_head}")
    configs = {}
    for p in parametrizations:
        for w in widths:
            d_ff = round(model_cfg.d_ff * w / model_cfg.d_model) if model_cfg.d_ff else 0
            mup = replace(model_cfg.mup, base_width=base_width)
            configs[p, w] = replace(model_cfg, d_model=w, d_ff=d_ff, parametrization=p, mup=mup)
    return configs


def coord_check(
    overrides: Iterable[str] = (),
    widths: Iterable[int] = (32, 64, 128, 256),
    steps: int = 5,
    lr: Optional[float] = None,
    base_width: Optional[int] = None,
    parametrizations: Iterable[str] = PARAMETRIZATIONS,
    seeds: int = 1,
    progress=None,
) -> CoordCheck:
    """Run the coordinate check. lr: constant LR (default: the config's optim.lr).
    base_width: muP's d_base (default: the narrowest width). seeds: repeat with seeds
    seed, seed+1, ... (a fresh init and a fresh fixed batch each) and average mean |x| over
    them. progress(parametrization, width): called before each width is trained."""
    from omegaconf import OmegaConf

    from scaleflow.config import compose_run
    from scaleflow.data import batch_offsets, check_length, gather, load_corpus
    from scaleflow.train import pick_device

    widths = sorted(set(int(w) for w in widths))
    if len(widths) < 2:
        raise ConfigError("the coordinate check needs at least two widths")
    if widths[0] < 1:
        raise ConfigError(f"widths must be positive, got {widths[0]}")
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    parametrizations = tuple(parametrizations)
    for p in parametrizations:
        if p not in PARAMETRIZATIONS:
            raise ConfigError(f"parametrization {p!r} is not one of {', '.join(PARAMETRIZATIONS)}")
    base = widths[0] if base_width is None else int(base_width)
    if base < 1:
        raise ConfigError(f"the muP base width must be positive, got {base}")
    # Both parametrizations run, at widths set below, so compose as SP: the config's own
    # d_model need not be >= a preset's base width (checked per width instead).
    cfg = compose_run(list(overrides) + ["model.parametrization=sp"])
    lr = float(cfg.optim.lr if lr is None else lr)
    if not lr > 0:
        raise ConfigError(f"the learning rate must be positive, got {lr}")
    configs = width_configs(OmegaConf.to_object(cfg.model), widths, base, parametrizations)

    device = pick_device(cfg.device)
    corpus = load_corpus(cfg.data, cfg.model.vocab_size)
    check_length(corpus, cfg.model.seq_len)
    batches = []
    for i in range(seeds):
        offsets = batch_offsets(cfg.seed + i, 0, cfg.trainer.batch_size, len(corpus.train), cfg.model.seq_len)
        batches.append(tuple(t.to(device) for t in gather(corpus.train, offsets, cfg.model.seq_len)))
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf

    result = CoordCheck(widths, steps, lr, base, parametrizations)
    for p in parametrizations:
        for w in widths:
            if progress is not None:
                progress(p, w)
            sums: dict[tuple[int, str], float] = {}
            for i, (x, y) in enumerate(batches):
                for key, value in _train_and_record(configs[p, w], cfg, x, y, steps, lr, clip, cfg.seed + i, device):
                    sums[key] = sums.get(key, 0.0) + value
            for (step, module), total in sums.items():
                result.rows.append({"parametrization": p, "width": w, "step": step, "module": module,
                                    "mean_abs": total / seeds})
    return result


def _train_and_record(model_cfg, cfg, x, y, steps, lr, clip, seed, device) -> list[tuple[tuple[int, str], float]]:
    """((step, module), mean |x|) of one model trained `steps` AdamW steps on the batch (x, y)."""
    import torch

    from scaleflow.model import GPT
    from scaleflow.train import build_optimizer

    torch.manual_seed(seed)
    model = GPT(model_cfg).to(device)
    model.train()
    optimizer = build_optimizer(model, cfg, device)
    for group in optimizer.param_groups:  # constant LR, with the parametrization's multipliers
        group["lr"] = lr * group["lr_mult"]
    seen: dict[str, float] = {}
    out = []
    handles = [module.register_forward_hook(_recorder(seen, name)) for name, module in _watched(model)]
    try:
        for step in range(steps + 1):
            seen.clear()
            if step < steps:
                logits, loss = model(x, y)
            else:
                with torch.no_grad():
                    logits, loss = model(x, y)
            # The logits after GPT.forward's output multiplier (not the head's own output).
            seen["logits"] = logits.detach().abs().float().mean().item()
            out += [((step, module), value) for module, value in seen.items()]
            if step < steps:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
    finally:
        for h in handles:
            h.remove()
    return out


def _watched(model) -> list[tuple]:
    """(name, module) pairs whose outputs are recorded, in forward order."""
    names = ["tok_emb"] + (["pos_emb"] if model.pos_emb is not None else [])
    for i in range(len(model.blocks)):
        names += [f"blocks.{i}.attn.qkv", f"blocks.{i}.attn", f"blocks.{i}.mlp.fc", f"blocks.{i}.mlp", f"blocks.{i}"]
    names.append("norm_f")
    modules = dict(model.named_modules())
    return [(n, modules[n]) for n in names]


def _recorder(seen: dict, name: str):
    def hook(module, inputs, output):
        seen[name] = output.detach().abs().float().mean().item()

    return hook


# ----------------------------------------------------------------------------- outputs

def write_csv(result: CoordCheck, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["parametrization", "width", "step", "module", "mean_abs"])
        writer.writeheader()
        for r in result.rows:
            writer.writerow({**r, "mean_abs": f"{r['mean_abs']:.6g}"})
    return path


def plot(result: CoordCheck, path: Path) -> Path:
    """Log-log mean |x| against width: a row of panels per parametrization, a panel per step,
    a line per module."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params, steps, modules = result.parametrizations, list(range(result.steps + 1)), result.modules()
    fig, axes = plt.subplots(len(params), len(steps), figsize=(2.6 * len(steps) + 2.4, 2.6 * len(params) + 0.6),
                             sharex=True, sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab20")
    for i, p in enumerate(params):
        for j, step in enumerate(steps):
            ax = axes[i][j]
            for k, module in enumerate(modules):
                ys = [result.value(p, w, step, module) for w in result.widths]
                ax.plot(result.widths, ys, marker="o", markersize=3, linewidth=1.2, color=cmap(k % 20),
                        linestyle="-" if is_hidden(module) else "--", label=module)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(result.widths, [str(w) for w in result.widths], fontsize=7)
            ax.minorticks_off()
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"{'muP' if p == 'mup' else 'SP'}, step {step}", fontsize=9)
            if j == 0:
                ax.set_ylabel("mean |x|")
            if i == len(params) - 1:
                ax.set_xlabel("width (d_model)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.suptitle(f"coordinate check: lr {result.lr:g}, muP base width {result.base_width}; "
                 f"step t = after t AdamW steps on one fixed batch", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
