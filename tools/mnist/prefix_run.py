"""Seed an unfinished `uqengine sample` run of n samples with the finished batches of a larger
run of the same settings (same seed, steps, draws, batch, ...), so that `uqengine sample --num n`
resumes it instead of recomputing them.

This relies on two properties of the sample job: every random number of sample i is keyed by
(seed, i, purpose) and not by --num or the batch layout, and a resumed run keeps the chunk files
of the batches it finished (the chunk's presence marks the batch done). Samples 0..n-1 of a
larger run are therefore exactly the samples of a run of n; with --classes balanced (class i mod
10) the classes are the same too. Only whole batches with start < n and end <= n are copied; a
last, shorter batch is left for the resumed run to compute.

  python3 tools/mnist/prefix_run.py SRC_SAMPLES_DIR DST_SAMPLES_DIR N [--batch 16]

SRC_SAMPLES_DIR is the run's --out (its `<out>.partial` folder, or a finished `<out>` with
chunks, is read); DST_SAMPLES_DIR becomes `<dst>.partial`; then run `uqengine sample` with the
same settings, --num N and --out DST_SAMPLES_DIR.
"""

import argparse
import json
import os
import shutil


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("num", type=int)
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args()
    src = a.src.rstrip("/") + ".partial"
    dst = a.dst.rstrip("/") + ".partial"
    run = json.load(open(os.path.join(src, "run.json")))
    if run["batch"] != a.batch or run["num"] < a.num:
        raise SystemExit(f"{src}: batch {run['batch']}, num {run['num']}; need batch {a.batch}, "
                         f"num >= {a.num}")
    if os.path.exists(dst) or os.path.exists(a.dst):
        raise SystemExit(f"{dst} or {a.dst} exists")
    os.makedirs(os.path.join(dst, "chunks"))
    os.makedirs(os.path.join(dst, "images"))
    copied = []
    for start in range(0, a.num, a.batch):
        end = start + a.batch
        chunk = os.path.join(src, "chunks", f"{start:06}.npy")
        if end > a.num or not os.path.exists(chunk):
            break
        for name in (f"{start:06}.npy", f"{start:06}.features.npy"):
            if os.path.exists(os.path.join(src, "chunks", name)):
                shutil.copy2(os.path.join(src, "chunks", name), os.path.join(dst, "chunks", name))
        for i in range(start, end):
            shutil.copy2(os.path.join(src, "images", f"{i:05}.png"),
                         os.path.join(dst, "images", f"{i:05}.png"))
            mdir = os.path.join(src, "members")
            if os.path.isdir(mdir):
                for m in sorted(os.listdir(mdir)):
                    s = os.path.join(mdir, m, "imgs", f"{i:05}.png")
                    if os.path.exists(s):
                        os.makedirs(os.path.join(dst, "members", m, "imgs"), exist_ok=True)
                        shutil.copy2(s, os.path.join(dst, "members", m, "imgs", f"{i:05}.png"))
        copied.append(start)
    run["num"] = a.num
    with open(os.path.join(dst, "run.json"), "w") as f:
        f.write(json.dumps(run, indent=2, sort_keys=True) + "\n")
    done = (copied[-1] + a.batch) if copied else 0
    print(f"{dst}: {len(copied)} batches copied (samples 0..{done - 1}); "
          f"{a.num - done} left to compute")


if __name__ == "__main__":
    main()
