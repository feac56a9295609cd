"""Check that train.py resumes exactly: an interrupted-and-resumed run writes the same log.csv
and final.json, byte for byte, as an uninterrupted run with the same seed (CPU).

    python examples/own_trainer/check_resume.py [--keep DIR]

The interrupted run is stopped three times, each time once log.csv shows enough progress
(never after a fixed sleep): SIGTERM (checkpoint now, exit 3), SIGUSR2 (the same), and SIGKILL
(no chance to checkpoint: the resume goes back to the last periodic checkpoint and must drop
the log rows written after it). Exit status 0 means the logs match.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ARGS = ["--n_layer=2", "--d_model=32", "--n_head=2", "--seq_len=64", "--batch_size=8", "--lr=3e-3",
        "--max_iters=300", "--warmup_iters=10", "--eval_interval=40", "--log_interval=5",
        "--ckpt_interval=50", "--seed=7", "--threads=1"]


def train(out_dir, *extra):
    return [sys.executable, os.path.join(HERE, "train.py"), f"--out_dir={out_dir}", *ARGS, *extra]


def last_iter(log_path):
    try:
        rows = open(log_path).read().splitlines()[1:]
    except FileNotFoundError:
        return -1
    complete = [r for r in rows if r.count(",") == 3]
    return int(complete[-1].split(",")[0]) if complete else -1


def interrupt(out_dir, sig, after_iter, resume):
    """Start a run, wait until log.csv reaches `after_iter`, send `sig`; return the exit code."""
    proc = subprocess.Popen(train(out_dir, *(["--resume"] if resume else [])),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while last_iter(os.path.join(out_dir, "log.csv")) < after_iter:
        if proc.poll() is not None or time.time() > deadline:
            sys.exit(f"FAIL: the run ended (or hung) before iter {after_iter}; output:\n{proc.communicate()[0]}")
        time.sleep(0.005)
    proc.send_signal(sig)
    out = proc.communicate()[0]
    print(f"  {signal.Signals(sig).name} after log iter {after_iter}: exit {proc.returncode}; "
          f"{out.strip().splitlines()[-1]}")
    return proc.returncode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="keep the two run directories under this folder")
    opts = ap.parse_args()
    root = opts.keep or tempfile.mkdtemp(prefix="own_trainer_check_")
    full, broken = os.path.join(root, "uninterrupted"), os.path.join(root, "interrupted")
    for d in (full, broken):
        shutil.rmtree(d, ignore_errors=True)

    print("uninterrupted run ...")
    subprocess.run(train(full), check=True, stdout=subprocess.DEVNULL)
    print("interrupted run ...")
    codes = [interrupt(broken, signal.SIGTERM, 20, resume=False),
             interrupt(broken, signal.SIGUSR2, 120, resume=True),
             interrupt(broken, signal.SIGKILL, 170, resume=True)]
    subprocess.run(train(broken, "--resume"), check=True, stdout=subprocess.DEVNULL)

    rows = len(open(os.path.join(full, "log.csv")).read().splitlines()) - 1
    failures = []
    if codes[:2] != [3, 3]:
        failures.append(f"SIGTERM/SIGUSR2 exit codes {codes[:2]}, expected [3, 3]")
    for name in ("log.csv", "final.json"):
        a, b = open(os.path.join(full, name)).read(), open(os.path.join(broken, name)).read()
        if a != b:
            failures.append(f"{name} differs:\n--- uninterrupted\n{a}--- interrupted + resumed\n{b}")
    if not opts.keep:
        shutil.rmtree(root)
    if failures:
        sys.exit("FAIL: " + "\n".join(failures))
    print(f"OK: log.csv ({rows} rows) and final.json are identical")


if __name__ == "__main__":
    main()
