"""(e) Start-up cost: `import napari_bioflow` and `napari-bioflow --help` (and the train / predict sub-commands' --help), each in fresh subprocesses.

Each is run `--repeats` times (interleaved: import, --help, import, --help, ...) and the median wall time is
quoted. Also reported: a bare `python -c pass` (interpreter start-up alone) and whether torch got imported by
`import napari_bioflow` (it must not be: the engine imports torch lazily). Target: both < 2 s.

    .venv/bin/python benchmarks/bench_import.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import loadavg, median, table, verdict, write_result  # noqa: E402

PY = sys.executable
CLI = shutil.which("napari-bioflow", path=str(Path(PY).parent)) or "napari-bioflow"


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(
        cmd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    cases = {
        "python -c pass": [PY, "-c", "pass"],
        "import napari_bioflow": [PY, "-c", "import napari_bioflow"],
        "napari-bioflow --help": [CLI, "--help"],
        "napari-bioflow train --help": [CLI, "train", "--help"],
        "napari-bioflow predict --help": [CLI, "predict", "--help"],
        # info: what a training or prediction pays before its first step (torch, then the model registry on top)
        "import torch": [PY, "-c", "import torch"],
        "torch + engine.models": [PY, "-c", "import torch; from napari_bioflow.engine.models import create_model"],
    }
    info = ("python -c pass", "import torch", "torch + engine.models")
    for cmd in cases.values():  # warm the OS file cache and the bytecode caches once
        wall(cmd)
    heavy = subprocess.run(
        [
            PY,
            "-c",
            (
                "import sys, napari_bioflow; print(','.join(m for m in ('torch', 'napari', 'qtpy', "
                "'dask', 'zarr', 'tifffile', 'matplotlib', 'pydantic', 'yaml', 'numpy') if m in sys.modules))"
            ),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    load_before = loadavg()
    seconds = {k: [] for k in cases}
    for _ in range(args.repeats):
        for k, cmd in cases.items():
            seconds[k].append(wall(cmd))
    summary = {k: median(v) for k, v in seconds.items()}
    rows = [
        [
            k,
            summary[k],
            args.repeats,
            "< 2 s" if k not in info else "(info)",
            verdict(summary[k] < 2) if k not in info else "",
        ]
        for k in cases
    ]
    print(table(rows, ["wall time (s)", "median", "repeats", "target", ""]))
    print(f"modules loaded by `import napari_bioflow`: {heavy or '(none of the heavy ones)'}")
    print(f"load average before {load_before}, after {loadavg()}")
    path = write_result(
        "import",
        {
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "summary_median_seconds": summary,
            "seconds": seconds,
            "heavy_modules_after_import": heavy.split(",") if heavy else [],
            "pass": all(summary[k] < 2 for k in cases if k not in info),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
