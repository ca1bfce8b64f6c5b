"""Issue 9 (reliability): memory. A training step that cannot fit is refused before the run's folder exists, with one
sentence saying what would fit (engine/train/memory.py); a failed allocation in training or prediction becomes one
sentence naming what to lower; the estimate is checked against a real peak; the patch-prefetch thread is joined."""

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from helpers import TINY_MODEL, bbbc_pairs, headless_checkpoint, read_pair, tree

import napari_bioflow
from napari_bioflow.cli import main
from napari_bioflow.config import RunConfig
from napari_bioflow.engine.data.sampling import prefetch
from napari_bioflow.engine.train import StepReport, Trainer
from napari_bioflow.engine.train.memory import (
    StepMemory,
    _cgroup_folders,
    _cgroup_room,
    is_out_of_memory,
    ram_available,
)

SRC = Path(napari_bioflow.__file__).resolve().parents[1]


def child_env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }


def write_pairs(root: Path, shape, n: int = 2) -> tuple[Path, Path]:
    """`n` synthetic raw/label pairs of `shape` (uint8, half foreground) in root/raw and root/label."""
    rng = np.random.default_rng(0)
    for sub in ("raw", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        raw = rng.integers(0, 255, shape, dtype=np.uint8)
        tifffile.imwrite(root / "raw" / f"im{i}.tif", raw)
        tifffile.imwrite(root / "label" / f"im{i}.tif", (raw > 127).astype(np.uint8))
    return root / "raw", root / "label"


def config_file(tmp_path: Path, raw: Path, label: Path, ndim: int, patch, batch: int, options=None, **train) -> Path:
    cfg = {
        "name": "mem",
        "output_dir": str(tmp_path / "runs"),
        "device": "cpu",
        "ndim": ndim,
        "seed": 0,
        "data": {"train_raw": str(raw), "train_label": str(label), "patch_size": list(patch), "val_split": 0.0},
        "model": {"options": options or {}},
        "train": {"epochs": 1, "batch_size": batch, "steps_per_epoch": 1, **train},
    }
    path = tmp_path / "mem.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("napari-bioflow: error: "), err
    return err[len("napari-bioflow: error: ") :].strip()


# --- the check before the first step -----------------------------------------------------------------------------
def test_a_step_that_cannot_fit_is_refused_before_the_run_folder_exists(tmp_path, capsys):
    # a 3D patch of 256^3 with batch 64 on a U-Net of 32..512 feature maps: estimated on the meta device (nothing of
    # it is allocated), it needs far more than this machine has
    raw, label = write_pairs(tmp_path / "data", (256, 256, 256), n=1)
    path = config_file(tmp_path, raw, label, 3, (256, 256, 256), 64, {"feature_maps": [32, 64, 128, 256, 512]})
    earlier = tmp_path / "runs" / "mem" / "results" / "mem_1"  # an earlier run of the same name is left alone
    earlier.mkdir(parents=True)
    (earlier / "keep.txt").write_text("earlier run")
    before = tree(tmp_path / "runs")
    capsys.readouterr()
    assert main(["train", str(path)]) == 2
    msg = one_line_error(capsys)
    m = re.fullmatch(
        r"A training step with train\.batch_size 64 and data\.patch_size 256x256x256 needs about ([\d.]+) (GB|MB) but "
        r"([\d.]+) (GB|MB) of RAM are free; (train\.batch_size (\d+) \(or a smaller data\.patch_size\) would fit|even "
        r"train\.batch_size 1 is too much: data\.patch_size (\d+)x\7x\7 with train\.batch_size 1 would fit)\.",
        msg,
    )
    assert m, msg
    need = float(m[1]) * (1e9 if m[2] == "GB" else 1e6)
    free = float(m[3]) * (1e9 if m[4] == "GB" else 1e6)
    assert need > free and need > 100e9  # 64 x 256^3 voxels x 32 feature maps x 4 bytes alone is 137 GB
    if m[6] is not None:  # a smaller batch
        assert 1 <= int(m[6]) < 64
    else:  # a smaller patch, a multiple of the U-Net's 16
        assert 16 <= int(m[7]) < 256 and int(m[7]) % 16 == 0
    # no run folder: the earlier run untouched, nothing added
    assert tree(tmp_path / "runs") == before
    assert sorted(p.name for p in (tmp_path / "runs" / "mem" / "results").iterdir()) == ["mem_1"]
    assert not (tmp_path / "runs" / "mem" / "config_files").exists()


def test_the_suggested_batch_fits_and_the_next_ones_do_not(tmp_path):
    # the sentence's batch size is the largest whose estimate fits the memory named (here: pretended free between
    # the estimates of 8 and 9 patches, through the estimator's own arithmetic: nothing is allocated)
    raw, label = write_pairs(tmp_path / "data", (256, 256))
    cfg = RunConfig.load(config_file(tmp_path, raw, label, 2, (256, 256), 64))
    trainer = Trainer(cfg)
    trainer._prepare()
    wf = trainer.workflow
    data = wf.training_data(trainer.dataset, cfg, trainer.normalizer)
    estimate = StepMemory(trainer.model, wf, cfg, data.example(), wf.loss(cfg))
    needs = [estimate.need(b, "cpu") for b in (1, 2, 8, 9, 64)]
    assert needs == sorted(needs) and needs[-1] > 8 * needs[0]  # grows with the batch, about in proportion
    room = (needs[2] + needs[3]) // 2
    assert estimate.largest_batch(room, "cpu", 64) == 8
    assert estimate.largest_batch(needs[0] - 1, "cpu", 64) == 0  # not even one patch
    assert not (tmp_path / "runs").exists()  # set up only: no run claimed


def test_the_sample_job_and_the_tests_batches_pass_the_check(tmp_path):
    # the shipped sample job's training (2D BBBC007: patch 128, batch 4, feature maps 16..64, as `napari-bioflow
    # sample` sets it) and a tiny config as the tests use: they train as before, the check says nothing
    from napari_bioflow.sample_data import sample_root

    root = sample_root() / "bbbc007_2d"
    sample = RunConfig.from_dict(
        {
            "name": "sample_2d",
            "output_dir": str(tmp_path / "sample"),
            "ndim": 2,
            "data": {
                "train_raw": str(root / "train/raw"),
                "train_label": str(root / "train/label"),
                "patch_size": [128, 128],
                "val_split": 0.25,
            },
            "model": {"options": {"feature_maps": [16, 32, 64]}},
            "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4},
        }
    )
    raw, label = write_pairs(tmp_path / "data", (128, 128))
    tiny = RunConfig.load(config_file(tmp_path, raw, label, 2, (64, 64), 2, TINY_MODEL))
    for cfg in (sample, tiny):
        reports = list(Trainer(cfg).run())
        assert any(isinstance(r, StepReport) for r in reports)


# --- the estimate against a real peak ----------------------------------------------------------------------------
MEASURE = textwrap.dedent("""
    import ctypes, gc, json, sys
    from pathlib import Path
    import torch
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.train.memory import StepMemory
    from napari_bioflow.engine.train.trainer import Trainer, _optimizer

    def status(key):
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = RunConfig.load(sys.argv[1])
    trainer = Trainer(cfg)
    trainer._prepare()
    wf, model = trainer.workflow, trainer.model
    data = wf.training_data(trainer.dataset, cfg, trainer.normalizer)
    loss_fn = wf.loss(cfg)
    need = StepMemory(model, wf, cfg, data.example(), loss_fn).need(cfg.train.batch_size, "cpu")

    def step(opt, xb, yb):
        x, y = wf.make_pair(torch.from_numpy(xb), torch.from_numpy(yb), None, cfg)
        opt.zero_grad(set_to_none=True)
        wf.training_loss(model, x, y, loss_fn).backward()
        opt.step()

    step(_optimizer(cfg, model.parameters()), *data.batch(1))  # warm-up: kernels loaded, threads started
    model.zero_grad(set_to_none=True)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from here
    base = status("VmRSS")
    opt = _optimizer(cfg, model.parameters())
    for _ in range(2):
        step(opt, *data.batch(cfg.train.batch_size))
    print(json.dumps({"need": need, "measured": status("VmHWM") - base}))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak RSS reset")
def test_the_estimate_is_close_to_the_real_peak_of_a_training_step(tmp_path):
    # default 2D U-Net, patch 256, batch 4 (the default config's step): the steps' peak RSS in a fresh process,
    # measured from just before them, against the estimate (which must not be below it: what passes must fit)
    raw, label = write_pairs(tmp_path / "data", (264, 264))
    path = config_file(tmp_path, raw, label, 2, (256, 256), 4)
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=600, env=child_env()
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = r["need"] / r["measured"]
    assert r["measured"] > 200 * 2**20  # the step itself dominates what is measured
    # the estimate is 1.45 x the live tensors + a fixed 384 MiB reserve, so at this size the ratio depends on what the
    # allocator kept of the measured peak: 1.56 with 758 MiB measured, 2.14 with 553 MiB on a loaded machine
    assert 1.0 <= ratio <= 2.5, r


# --- what is free ------------------------------------------------------------------------------------------------
def test_the_cgroup_limit_of_this_process_counts_when_it_is_closer_than_memavailable(tmp_path):
    # a copy of this process's cgroup folders (as /proc/self/cgroup names them) with a limit of 3 GiB of which
    # 1 GiB is used (256 MiB of it reclaimable page cache): 2.25 GiB are left
    folders = _cgroup_folders(tmp_path)
    assert folders, "no cgroup in /proc/self/cgroup"
    own, version = folders[0]
    own.mkdir(parents=True, exist_ok=True)
    names = (
        ("memory.max", "memory.current", "inactive_file")
        if version == "v2"
        else ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    )
    (own / names[0]).write_text(str(3 * 2**30))
    (own / names[1]).write_text(str(2**30))
    (own / "memory.stat").write_text(f"{names[2]} {256 * 2**20}\n")
    assert _cgroup_room(tmp_path) == 2 * 2**30 + 256 * 2**20
    (own / names[0]).write_text("max" if version == "v2" else str(2**63 - 4096))  # no limit
    assert _cgroup_room(tmp_path) is None
    assert 0 < ram_available() <= 2**50


# --- allocation failures -----------------------------------------------------------------------------------------
def test_real_allocation_failures_are_recognised():
    import torch

    with pytest.raises(RuntimeError) as e:  # 1 PiB: refused by the kernel at once, nothing is touched
        torch.empty(2**50, dtype=torch.uint8)
    assert is_out_of_memory(e.value)
    with pytest.raises(MemoryError) as e:
        np.empty(2**50, dtype=np.uint8)
    assert is_out_of_memory(e.value)
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(ValueError("out of memory"))


LIMITED = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    import numpy, tifffile, torch, zarr  # what the command needs, mapped before the limit
    from napari_bioflow import cli
    from napari_bioflow.engine.data import io, sampling, sources  # noqa
    from napari_bioflow.engine.predict import inference, sliding_window  # noqa
    from napari_bioflow.engine.train import checkpoint, memory, trainer  # noqa
    from napari_bioflow.engine.models import create_model  # noqa
    from napari_bioflow.engine.workflows import get_workflow
    get_workflow("semantic_segmentation")
    size = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/self/status").read_text().splitlines()
                if ln.startswith("VmSize:"))
    # the address space this process may still take: enough for the command, not for the step or the tile
    resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]) * 2**20, resource.RLIM_INFINITY))
    sys.exit(cli.main(sys.argv[2:]))
""")


def run_limited(margin_mb: int, *argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(margin_mb), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(),
    )


@pytest.mark.skipif((ram_available() or 0) < 4 * 2**30, reason="the memory check would refuse the step first")
def test_running_out_of_memory_in_a_training_step_is_one_sentence_and_leaves_no_run(tmp_path):
    # patch 512, batch 4, default U-Net: the check passes (it estimates ~3.4 GB), but the process may take only
    # 800 MB more address space (the step needs ~2.5 GB), so the first step cannot allocate (a real failure)
    raw, label = write_pairs(tmp_path / "data", (520, 520))
    path = config_file(tmp_path, raw, label, 2, (512, 512), 4)
    out = run_limited(800, "train", path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr == (
        "napari-bioflow: error: Training ran out of memory (RAM) with train.batch_size 4 and "
        "data.patch_size 512x512: lower train.batch_size or data.patch_size.\n"
    )
    assert tree(tmp_path / "runs") == {}  # the run that never saved a checkpoint is gone
    assert not (tmp_path / "runs" / "mem").exists()


def test_running_out_of_memory_while_predicting_is_one_sentence(tmp_path):
    raw, label = read_pair(*bbbc_pairs()[0])
    ckpt = headless_checkpoint(tmp_path / "ckpt", raw[:128, :128], label[:128, :128])
    images = tmp_path / "images"
    images.mkdir()
    big = np.tile(raw, (-(-4096 // raw.shape[0]), -(-4096 // raw.shape[1])))[:4096, :4096]
    tifffile.imwrite(images / "big.tif", np.ascontiguousarray(big))
    before = tree(images)
    # one 4096x4096 tile: each activation of the tiny U-Net is 512 MB, and only 600 MB more may be taken
    out = run_limited(
        600,
        "predict",
        "--checkpoint",
        ckpt,
        "--input",
        images,
        "--output",
        tmp_path / "out",
        "--set",
        "predict.tile_size=[4096,4096]",
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr == (
        f"napari-bioflow: error: Prediction of {images / 'big.tif'} ran out of memory (RAM) with "
        f"tiles of 4096x4096, 1 per pass: lower predict.tile_size or predict.batch_size.\n"
    )
    assert tree(images) == before


# --- threads --------------------------------------------------------------------------------------------------
def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bioflow-prefetch"]


def test_a_closed_prefetch_stops_and_joins_its_thread():
    import time

    def make():
        time.sleep(0.05)
        return np.zeros(3)

    batches = prefetch(make, 100)
    next(batches)
    assert len(prefetch_threads()) == 1
    batches.close()
    assert prefetch_threads() == []  # joined when closed, not left to finish on its own


def test_no_prefetch_thread_outlives_training_finished_cancelled_or_failed(tmp_path):
    raw, label = write_pairs(tmp_path / "data", (128, 128))
    cfg = RunConfig.load(config_file(tmp_path, raw, label, 2, (64, 64), 2, TINY_MODEL, epochs=2, steps_per_epoch=4))
    list(Trainer(cfg).run())
    assert prefetch_threads() == []
    trainer = Trainer(cfg)
    for r in trainer.run():
        if isinstance(r, StepReport) and r.step == 2:
            trainer.cancel()
    assert prefetch_threads() == []
    run = Trainer(cfg).run()  # the caller stops listening mid-epoch (a closed widget): the thread goes too
    next(r for r in run if isinstance(r, StepReport))
    run.close()
    assert prefetch_threads() == []
