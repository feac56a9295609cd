"""A tiny byte-level GPT trainer, standing in for "your own" training script (it knows nothing
of scaleflow). Trains on the bytes of --data (default: the Python standard library's source),
logs to <out_dir>/log.csv, checkpoints to <out_dir>/ckpt.pt; on SIGTERM or SIGUSR2 it
checkpoints and exits with code 3, and --resume continues bit for bit (on CPU).

    python examples/own_trainer/train.py --out_dir=out --max_iters=60
"""

import argparse
import glob
import json
import math
import os
import signal
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--out_dir", required=True)
ap.add_argument("--data", default=None, help="a text file; default: the Python stdlib's *.py")
for name, default in [("n_layer", 2), ("d_model", 32), ("n_head", 2), ("seq_len", 64), ("batch_size", 8),
                      ("max_iters", 200), ("warmup_iters", 10), ("eval_interval", 50), ("eval_batches", 4),
                      ("log_interval", 10), ("ckpt_interval", 50), ("seed", 0), ("threads", 1)]:
    ap.add_argument(f"--{name}", type=int, default=default)
ap.add_argument("--lr", type=float, default=3e-3)  # peak learning rate
ap.add_argument("--resume", action="store_true")  # continue from <out_dir>/ckpt.pt
ap.add_argument("--device", default="cpu")
args = ap.parse_args()
stop = []  # set by SIGTERM / SIGUSR2 (a scheduler's "time is up"); acted on between iterations
for sig in (signal.SIGTERM, signal.SIGUSR2):
    signal.signal(sig, lambda signum, frame: stop.append(signum))
torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
os.makedirs(args.out_dir, exist_ok=True)
ckpt_path, log_path = os.path.join(args.out_dir, "ckpt.pt"), os.path.join(args.out_dir, "log.csv")

# ---------------------------------------------------------------- data: bytes, 95% / 5% split
if args.data:
    raw = open(args.data, "rb").read()
else:
    stdlib = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))
    raw = b"".join(open(f, "rb").read() for f in stdlib)[: 2 * 1024 * 1024]
data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
T, B, n_val = args.seq_len, args.batch_size, len(data) // 20
assert n_val > T + 1, f"the data ({len(data)} bytes) is too small for seq_len {T}"
train_data, val_data = data[:-n_val], data[-n_val:]
sampler = torch.Generator().manual_seed(args.seed)  # its state goes into the checkpoint


def batch(d, starts):  # inputs and their next-byte targets
    w = torch.stack([d[i : i + T + 1] for i in starts.tolist()]).to(args.device)
    return w[:, :-1], w[:, 1:]


# a FIXED validation set: eval_batches x batch_size evenly spaced windows
val_starts = torch.linspace(0, len(val_data) - T - 1, args.eval_batches * B).long().split(B)


# ---------------------------------------------------------------- model
class Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.out = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        d = args.d_model
        self.tok, self.pos = nn.Embedding(256, d), nn.Embedding(T, d)  # learned positions
        self.blocks = nn.ModuleList(Block(d, args.n_head) for _ in range(args.n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.tok.weight.T  # tied head
        return F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))  # nats per token


model = GPT().to(args.device)
n_params = sum(p.numel() for p in model.parameters())
print(f"number of parameters: {n_params}", flush=True)


class AdamW:  # written out (torch.optim's first use costs ~1.5 s of imports per run)
    def __init__(self, params, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        self.params, self.betas, self.eps, self.wd, self.t = list(params), betas, eps, weight_decay, 0
        self.m, self.v = ([torch.zeros_like(p) for p in self.params] for _ in range(2))

    @torch.no_grad()
    def step(self, lr):
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            if p.dim() >= 2:  # decoupled weight decay on matrices only
                p.mul_(1 - lr * self.wd)
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**self.t))

    def state_dict(self):
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state):
        self.t, self.m, self.v = state["t"], state["m"], state["v"]


optimizer = AdamW(model.parameters())


def lr_at(it):  # linear warmup, then cosine down to 10% of the peak at max_iters
    if it < args.warmup_iters:
        return args.lr * (it + 1) / args.warmup_iters
    frac = (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def evaluate():
    model.eval()
    loss = sum(model(*batch(val_data, s)).item() for s in val_starts) / len(val_starts)
    model.train()
    return loss


def atomic_write(path, text):  # write a temp file, then rename: never a half-written file
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def save_checkpoint(it):
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter": it,
             "torch_rng": torch.get_rng_state(), "sampler_rng": sampler.get_state(), "args": vars(args)}
    torch.save(state, ckpt_path + ".tmp")
    os.replace(ckpt_path + ".tmp", ckpt_path)


# ---------------------------------------------------------------- start or resume
it = 0
if args.resume and os.path.exists(ckpt_path):
    ckpt = torch.load(ckpt_path, map_location=args.device)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["torch_rng"])
    sampler.set_state(ckpt["sampler_rng"])
    it = ckpt["iter"]
    print(f"resuming from iter {it}", flush=True)
    rows = open(log_path).read().splitlines() if os.path.exists(log_path) else []
    kept = [r for r in rows[1:] if r and int(r.split(",")[0]) <= it]  # drop rows after the ckpt
    atomic_write(log_path, "".join(r + "\n" for r in ["iter,tokens,loss,val_loss", *kept]))
elif args.resume:
    print("no checkpoint to resume from: starting from scratch", flush=True)
if it == 0:
    with open(log_path, "w") as f:
        f.write("iter,tokens,loss,val_loss\n")
log = open(log_path, "a")

# ---------------------------------------------------------------- train
val_loss = None
while it < args.max_iters:
    if stop:
        save_checkpoint(it)
        print(f"signal {stop[0]}: checkpointed at iter {it}, exiting", flush=True)
        sys.exit(3)
    x, y = batch(train_data, torch.randint(len(train_data) - T - 1, (B,), generator=sampler))
    loss = model(x, y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step(lr_at(it))
    it += 1  # iters done = optimizer steps
    last = it == args.max_iters
    evaluated = it % args.eval_interval == 0 or last
    if evaluated:
        val_loss = evaluate()
        print(f"step {it}: train loss {loss.item():.4f}, val loss {val_loss:.4f}", flush=True)
    if evaluated or it % args.log_interval == 0:
        log.write(f"{it},{it * T * B},{loss.item()!r},{repr(val_loss) if evaluated else ''}\n")
        log.flush()
    if it % args.ckpt_interval == 0 or last:
        save_checkpoint(it)

log.close()
if val_loss is None:  # resumed from a finished run's checkpoint
    val_loss = evaluate()
result = {"n_params": n_params, "val_loss": val_loss, "iters": args.max_iters}
atomic_write(os.path.join(args.out_dir, "final.json"), json.dumps(result) + "\n")
print(f"done: {json.dumps(result)}", flush=True)
