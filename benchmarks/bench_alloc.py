"""(extra) What glibc's malloc costs torch on CPU: page faults of freshly mmapped big tensors.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it on free, so
each big activation of every forward/backward pass is page-faulted (and zeroed by the kernel) again. Run in
fresh subprocesses, interleaved, `--repeats` times:
  default   the process as napari-bioflow runs it today
  no-mmap   MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4 GiB MALLOC_TOP_PAD_=256 MiB: big blocks come from the heap
            and are reused (what jemalloc/tcmalloc or mallopt() would also give)
each timing (a) the bare training step of the default 2D U-Net (patch 256, batch 4, ADAMW) and (b) its forward on
a 2048x2048 image, with the system time and the minor page faults of each. Informational: no target.

    .venv/bin/python benchmarks/bench_alloc.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import loadavg, median, table, write_result  # noqa: E402

ENV_NO_MMAP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30), "MALLOC_TOP_PAD_": str(256 * 2**20)}


def child() -> dict:
    import torch
    import torch.nn.functional as F

    from napari_bioflow.engine.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", ndim=2, in_channels=1, out_channels=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.rand(4, 1, 256, 256), torch.randint(0, 2, (4, 256, 256))
    big = torch.rand(1, 1, 2048, 2048)

    def measure(fn, n):
        fn()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(n):
            fn()
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        return {
            "seconds": (t1 - t0) / n,
            "sys_seconds": (r1.ru_stime - r0.ru_stime) / n,
            "minor_faults": (r1.ru_minflt - r0.ru_minflt) / n,
        }

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def forward():
        with torch.inference_mode():
            model(big)

    return {"train_step": measure(step, 6), "forward_2048": measure(forward, 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child()))
        return
    load_before, runs = loadavg(), {"default": [], "no-mmap": []}
    for r in range(args.repeats):
        for mode, extra in (("default", {}), ("no-mmap", ENV_NO_MMAP)):
            out = subprocess.run(
                [sys.executable, __file__, "--child"],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, **extra},
            ).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
        d, n = runs["default"][-1], runs["no-mmap"][-1]
        print(
            f"round {r + 1}: step {d['train_step']['seconds']:.2f} s vs {n['train_step']['seconds']:.2f} s; "
            f"forward 2048^2 {d['forward_2048']['seconds']:.2f} s vs {n['forward_2048']['seconds']:.2f} s; load {loadavg()}",
            flush=True,
        )
    rows, summary = [], {}
    for what, unit in (("train_step", "patches/s"), ("forward_2048", "MP/s")):
        scale = 4 if what == "train_step" else 2048 * 2048 / 1e6
        d = [scale / r[what]["seconds"] for r in runs["default"]]
        n = [scale / r[what]["seconds"] for r in runs["no-mmap"]]
        ratio = median([b / a for a, b in zip(d, n)])
        summary[what] = {
            "default": median(d),
            "no_mmap": median(n),
            "ratio_no_mmap_over_default": ratio,
            "sys_seconds_default": median([r[what]["sys_seconds"] for r in runs["default"]]),
            "sys_seconds_no_mmap": median([r[what]["sys_seconds"] for r in runs["no-mmap"]]),
            "faults_default": median([r[what]["minor_faults"] for r in runs["default"]]),
            "faults_no_mmap": median([r[what]["minor_faults"] for r in runs["no-mmap"]]),
        }
        s = summary[what]
        rows.append(
            [
                f"{what} ({unit})",
                s["default"],
                s["no_mmap"],
                ratio,
                args.repeats,
                f"{s['sys_seconds_default']:.2f} / {s['sys_seconds_no_mmap']:.2f}",
                f"{s['faults_default']:.0f} / {s['faults_no_mmap']:.0f}",
            ]
        )
    print(table(rows, ["", "default", "no-mmap", "ratio", "repeats", "sys s (default / no-mmap)", "minor faults"]))
    print(f"load average before {load_before}, after {loadavg()}")
    print(
        f"wrote {write_result('alloc', {'loadavg_before': load_before, 'loadavg_after': loadavg(), 'env_no_mmap': ENV_NO_MMAP, 'summary': summary, 'runs': runs})}"
    )


if __name__ == "__main__":
    main()
