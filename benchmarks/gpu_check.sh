#!/usr/bin/env bash
# Issue 14 item 4: the GPU path on a CUDA machine in one go (< 5 minutes on one recent GPU), printing the figures:
#   1. trainer/bare: patches/s of the whole Trainer (AMP, channels-last, pinned prefetched batches) against the bare
#      step of the same model and loss on tensors already on the GPU (same precision); target >= 0.9
#   2. AMP: the bare step in mixed precision (bf16, or fp16 with a scaler) against float32; target >= 1.5 x
#   3. torch.compile: the bare step compiled (first-step cost and steady speed), when it compiles
#   4. prediction: a 2048 x 2048 image through the predictor (tiles, blending, labels) on the GPU, megapixels/s
#   5. DDP: a short 2-process torchrun training on CUDA (two GPUs), else on the CPU with gloo (said so)
# Run from the repository root:  bash benchmarks/gpu_check.sh   (PYTHON=... to choose the interpreter)
# On a machine without CUDA it says so and exits 0 after checking that the CPU refuses train.compile.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"

cat > "$TMP/check.py" <<'EOF'
import sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
from _common import SAMPLE_2D  # noqa: E402

from napari_bioflow.config import RunConfig
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.train import StepReport, Trainer
from napari_bioflow.engine.train.accel import StepAccelerator

BATCH, PATCH = 8, 256
cuda = torch.cuda.is_available()
device = "cuda" if cuda else "cpu"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {torch.cuda.get_device_name(0) if cuda else 'cpu'}")


def config(out: Path, **train) -> RunConfig:
    return RunConfig.from_dict({
        "name": "gpu", "output_dir": str(out), "device": device,
        "data": {"train_raw": str(SAMPLE_2D / "train" / "raw"), "train_label": str(SAMPLE_2D / "train" / "label"),
                 "val_raw": str(SAMPLE_2D / "test" / "raw"), "val_label": str(SAMPLE_2D / "test" / "label"),
                 "patch_size": [PATCH, PATCH]},
        "train": {"batch_size": BATCH, "patience": 0, "epochs": 3, "steps_per_epoch": 20, **train},
    })


if not cuda:
    try:
        StepAccelerator(config(Path(tempfile.mkdtemp()), compile=True), "cpu")
        print("FAIL: train.compile was accepted on the CPU")
        sys.exit(1)
    except InputError as e:
        print(f"no CUDA GPU here: nothing to measure. The CPU refuses train.compile: {e}")
        sys.exit(0)


def sync():
    torch.cuda.synchronize()


def trainer_rate(**train) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        trainer, times, last = Trainer(config(Path(tmp), **train)), [], None
        for rep in trainer.run():
            if isinstance(rep, StepReport):
                sync()
                now = time.perf_counter()
                if rep.epoch > 1 and rep.step >= 2 and last is not None:
                    times.append(now - last)
                last = now
            else:
                last = None
        return BATCH / float(np.median(times))


def bare_rate(amp: bool, compile_: bool = False, steps: int = 30) -> tuple[float, float]:
    """(patches/s, seconds of the first step) of the default U-Net's step on tensors already on the GPU."""
    from napari_bioflow.engine.models import create_model
    from napari_bioflow.engine.workflows import get_workflow

    cfg = config(Path(tempfile.mkdtemp()), amp="auto" if amp else "off", compile=compile_)
    wf = get_workflow(cfg)
    acc = StepAccelerator(cfg, "cuda")
    model = acc.prepare_model(create_model(cfg.model.name, ndim=2, in_channels=1, out_channels=2,
                                           **wf.model_defaults(cfg)).cuda().train())
    net = acc.wrap_forward(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = wf.loss(cfg)
    x = acc.layout(torch.rand(BATCH, 1, PATCH, PATCH, device="cuda"))
    y = torch.randint(0, 2, (BATCH, PATCH, PATCH), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with acc.autocast():
            loss = wf.training_loss(net, x, y, loss_fn)
        acc.backward_step(loss, opt)

    t = time.perf_counter(); step(); sync(); first = time.perf_counter() - t
    for _ in range(3):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return BATCH * steps / (time.perf_counter() - t), first


amp_rate, _ = bare_rate(True)
fp32_rate, _ = bare_rate(False)
dtype = StepAccelerator(config(Path(tempfile.mkdtemp())), "cuda").dtype
print(f"bare step: AMP ({dtype}) {amp_rate:.1f} patches/s, float32 {fp32_rate:.1f} patches/s: "
      f"AMP/fp32 {amp_rate / fp32_rate:.2f} (target >= 1.5)")
rate = trainer_rate()
print(f"trainer step (AMP, channels-last, pinned prefetch): {rate:.1f} patches/s: trainer/bare {rate / amp_rate:.2f} "
      f"(target >= 0.9)")
try:
    c_rate, first = bare_rate(True, compile_=True)
    print(f"torch.compile: first step {first:.1f} s, then {c_rate:.1f} patches/s ({c_rate / amp_rate:.2f} x eager AMP)")
except Exception as e:  # noqa: BLE001
    print(f"torch.compile: failed here ({type(e).__name__}: {str(e).splitlines()[0][:200]})")

# prediction of a 2048 x 2048 image with a checkpoint of a short run
from napari_bioflow.engine.predict.inference import predict_array  # noqa: E402
from napari_bioflow.engine.train.checkpoint import load_model  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    trainer = Trainer(config(Path(tmp), epochs=1, steps_per_epoch=5))
    for _ in trainer.run():
        pass
    loaded = load_model(trainer.best_checkpoint, device="cuda")
    image = np.random.default_rng(0).random((2048, 2048)).astype(np.float32)
    predict_array(loaded, image[:512, :512], device="cuda")
    times = []
    for _ in range(3):
        sync(); t = time.perf_counter()
        predict_array(loaded, image, device="cuda")
        sync(); times.append(time.perf_counter() - t)
    print(f"prediction 2048x2048: {float(np.median(times)):.2f} s ({2048 * 2048 / 1e6 / float(np.median(times)):.1f} Mpx/s)")
EOF

timeout 240 "$PY" "$TMP/check.py" || echo "check.py ended with status $?"

# a short 2-process DDP run through the CLI
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -ge 2 ]; then DEV=cuda; P=256; B=8; N=10; else
  DEV=cpu; P=64; B=4; N=3; echo "DDP: $GPUS GPU(s): the 2-process run goes on the CPU (gloo), small"; fi
"$PY" -m napari_bioflow.cli init semantic_segmentation --ndim 2 -o "$TMP/ddp.yaml" >/dev/null
S=src/napari_bioflow/sample_data/bbbc007_2d
start=$(date +%s)
timeout 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m napari_bioflow.cli train "$TMP/ddp.yaml" \
  --set device=$DEV --set output_dir="$TMP/runs" --set data.train_raw=$S/train/raw --set data.train_label=$S/train/label \
  --set "data.patch_size=[$P,$P]" --set train.epochs=2 --set train.steps_per_epoch=$N --set train.batch_size=$B 2>&1 | tail -3
status=${PIPESTATUS[0]}
echo "DDP 2 processes on $DEV: status $status, $(python3 -c "import time; print(round(time.time() - $start, 1))") s for 2 epochs of $N steps"
ls "$TMP"/runs/*/checkpoints 2>/dev/null | head -3
