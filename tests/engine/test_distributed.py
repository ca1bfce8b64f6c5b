"""Distributed training (DistributedDataParallel under torchrun), tested as a user runs it: `torchrun --standalone
--nproc_per_node 2 -m napari_bioflow.cli train CONFIG` on 2 CPU processes (gloo, one torch thread each), against
`napari-bioflow train CONFIG` in one process with the same config."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from ddp_worker import UNEVEN
from helpers import crop_folders, read_csv, run_all, tree

import napari_bioflow
from napari_bioflow.config import RunConfig
from napari_bioflow.engine.train import Trainer
from napari_bioflow.engine.train.checkpoint import read_checkpoint

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)

SRC = Path(napari_bioflow.__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

# Adam (the default optimizer) divides each gradient by its own running size, so a tensor whose true gradient is zero
# turns float rounding into steps of +-learning_rate: the biases of the convolutions that an InstanceNorm follows
# (the norm subtracts them; they change no output). Every other tensor, the losses and the predictions match tightly.
BIAS_BEFORE_NORM = re.compile(r"\.(conv1|conv2|up)\.bias$")
TOL = 1e-5


def env() -> dict:
    e = dict(os.environ)
    e.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), e.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return e


def launch(*commands, cwd: Path) -> list[str]:
    """Run the commands side by side (most of their time is importing torch); return their stdouts."""
    procs = [
        subprocess.Popen(c, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    outs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=180)  # a deadlock between the ranks fails here
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        outs.append(out)
    return outs


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    (train_raw, train_label), (test_raw, test_label) = (
        crop_folders(root / "train", "train", size=128),
        crop_folders(root / "test", "test", size=128),
    )
    cfg = {
        "name": "ddp",
        "device": "cpu",
        "seed": 0,
        "data": {
            "train_raw": str(train_raw),
            "train_label": str(train_label),
            "test_raw": str(test_raw),
            "test_label": str(test_label),
            "patch_size": [64, 64],
            "val_split": 0.25,
        },
        "model": {"options": {"feature_maps": [4, 8]}},
        # augmentation stays on: every rank augments the global batch with the single process's generator
        "train": {"epochs": 2, "patience": 0, "batch_size": 4, "steps_per_epoch": 3, "learning_rate": 3e-3},
    }
    path = root / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def runs(config):
    work = config.parent
    single, multi = launch(
        [sys.executable, "-m", "napari_bioflow.cli", "train", str(config), "--set", "output_dir=single"],
        [*TORCHRUN, "-m", "napari_bioflow.cli", "train", str(config), "--set", "output_dir=multi"],
        cwd=work,
    )
    return {"single": (work / "single" / "ddp", single), "multi": (work / "multi" / "ddp", multi)}


def test_both_ranks_train_and_only_rank_0_prints_and_writes(runs):
    root, out = runs["multi"]
    # each rank trains 2 epochs x 3 steps on its half (2 patches) of every 4-patch batch
    for rank in (0, 1):
        (line,) = [ln for ln in out.splitlines() if ln.startswith(f"[rank {rank}/2]")]
        assert "trained 6 steps on 12 patches (gloo, cpu)" in line
    own_losses = {float(ln.rsplit(" ", 1)[1]) for ln in out.splitlines() if ln.startswith("[rank ")}
    assert len(own_losses) == 2  # the ranks trained on different patches
    # rank 0 alone prints the progress and predicts the test images
    assert out.count("run ddp_1 in ") == 1 and out.count("epoch 2/2 ") == 1
    assert out.count("predicted ") == 2 and "training finished after 2 epoch(s)" in out
    # one experiment folder, one run: one config, one best and one last checkpoint, one log, one set of results
    files = sorted(tree(root))
    assert sorted(p.name for p in root.parent.iterdir()) == ["ddp"]
    assert [f for f in files if f.startswith(("config_files", "checkpoints"))] == [
        "checkpoints/ddp_1-checkpoint-best.pth",
        "checkpoints/ddp_1-checkpoint-last.pth",
        "config_files/ddp_1.yaml",
    ]
    assert [f for f in files if f.endswith(".csv")] == [
        "results/ddp_1/metrics.csv",
        "results/ddp_1/train_logs/ddp_1_log.csv",
    ]
    assert sorted(p.name for p in (root / "results").iterdir()) == ["ddp_1"]
    assert len(read_csv(root / "results/ddp_1/train_logs/ddp_1_log.csv")) == 2
    # rank 0 alone writes TensorBoard scalars: one event file, as in the single-process run
    assert len([f for f in files if "/tensorboard/events.out.tfevents." in f]) == 1
    # the same files as the single-process run (the event file's name holds its time and process id)
    assert named(files) == named(tree(runs["single"][0]))


def test_result_matches_the_single_process_run(runs):
    (single, _), (multi, _) = runs["single"], runs["multi"]
    # the logged losses and validation metrics
    for a, b in zip(
        read_csv(single / "results/ddp_1/train_logs/ddp_1_log.csv"),
        read_csv(multi / "results/ddp_1/train_logs/ddp_1_log.csv"),
        strict=True,
    ):
        for key in ("train_loss", "val_loss", "iou_foreground", "iou_mean", "learning_rate"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=TOL, abs=TOL), key
    # the weights: the same tensor names (no DDP 'module.' prefix), the same values
    a = read_checkpoint(single / "checkpoints/ddp_1-checkpoint-last.pth")
    b = read_checkpoint(multi / "checkpoints/ddp_1-checkpoint-last.pth")
    assert list(a["state_dict"]) == list(b["state_dict"])
    assert a["epoch"] == b["epoch"] == 2
    compared = 0
    for name, ta in a["state_dict"].items():
        if not BIAS_BEFORE_NORM.search(name):
            torch.testing.assert_close(b["state_dict"][name], ta, rtol=0, atol=TOL, msg=name)
            compared += 1
    assert compared >= 20
    # so the model computes the same thing: the predicted test probabilities match
    for path in sorted((single / "results/ddp_1/per_image").glob("*.tif")):
        pa, pb = tifffile.imread(path), tifffile.imread(multi / "results/ddp_1/per_image" / path.name)
        np.testing.assert_allclose(pb, pa, rtol=0, atol=TOL)


def named(files) -> list[str]:
    """Sorted relative paths, TensorBoard event files without their time, host and process id."""
    return sorted(re.sub(r"(events\.out\.tfevents)\..*$", r"\1", f) for f in files)


@pytest.fixture(scope="module")
def worker(config, tmp_path_factory):
    """tests/engine/ddp_worker.py under torchrun: Trainer runs driven from Python (cancel, uneven batch, early stop)."""
    out_dir = tmp_path_factory.mktemp("ddp_worker")
    (out,) = launch([*TORCHRUN, str(WORKER), str(config), str(out_dir)], cwd=config.parent)
    return sorted(ln for ln in out.splitlines() if ln.startswith("[rank ")), out_dir


def test_a_cancel_on_one_rank_stops_every_rank_at_the_same_batch(worker):
    lines, out_dir = worker
    # rank 1 alone cancelled after step 1 of epoch 2: both ranks stop before step 2 (3 + 1 steps), epoch 1 kept
    assert [ln for ln in lines if " cancel " in ln] == [
        f"[rank {r}] cancel reason=cancelled epochs_run=1 steps=4 run=cancel_1 world=2" for r in (0, 1)
    ]
    assert named(tree(out_dir / "cancel")) == [
        "checkpoints/cancel_1-checkpoint-best.pth",
        "checkpoints/cancel_1-checkpoint-last.pth",
        "config_files/cancel_1.yaml",
        "results/cancel_1/charts/cancel_1_iou_foreground.png",
        "results/cancel_1/charts/cancel_1_loss.png",
        "results/cancel_1/tensorboard/events.out.tfevents",
        "results/cancel_1/train_logs/cancel_1_log.csv",
    ]


def test_early_stopping_stops_every_rank_together(worker):
    lines, _ = worker
    assert [ln for ln in lines if " early_stop " in ln] == [
        f"[rank {r}] early_stop reason=early_stopped epochs_run=2 steps=6 run=early_1 world=2" for r in (0, 1)
    ]


def test_a_batch_split_unevenly_matches_one_process_tensor_by_tensor(worker, config, tmp_path):
    lines, out_dir = worker
    # 3 patches split 2 + 1, each rank's loss weighted by its share: the same gradient as one process; with SGD
    # (no tensor's rounding noise amplified) every tensor matches, the conv biases before a norm included
    assert [ln for ln in lines if " uneven " in ln] == [
        f"[rank {r}] uneven reason=finished epochs_run=2 steps=6 run=uneven_1 world=2" for r in (0, 1)
    ]
    cfg = RunConfig.load(config, [f"output_dir={tmp_path}", "data.test_raw=null", "data.test_label=null", *UNEVEN])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        trainer = Trainer(cfg)
        run_all(trainer)
    finally:
        torch.set_num_threads(threads)
    a = read_checkpoint(trainer.experiment.last_checkpoint)["state_dict"]
    b = read_checkpoint(out_dir / "uneven/checkpoints/uneven_1-checkpoint-last.pth")["state_dict"]
    assert list(a) == list(b)
    for name, ta in a.items():
        torch.testing.assert_close(b[name], ta, rtol=0, atol=TOL, msg=name)


JOIN_AND_EXIT = """
import atexit, os, torch, torch.distributed as dist
say = lambda line: os.write(1, (line + "\\n").encode())  # one write: the two ranks share the pipe
# registered first, so it runs last at exit: after what setup() registered
atexit.register(lambda: say(f"[rank {os.environ['RANK']}] at exit the group is left: {not dist.is_initialized()}"))
from napari_bioflow.engine.train.distributed import setup
ctx = setup("cpu", 2)
net = ctx.wrap(torch.nn.Linear(2, 2))  # DistributedDataParallel: torch keeps the group's threads alive from here
net(torch.ones(1, 2)).sum().backward()
say(f"[rank {ctx.rank}] loss {ctx.global_loss(torch.tensor(0.5), 0.5)}")
# ends without leaving the group, as a script driving the trainer does
"""


def test_a_process_that_joined_the_group_leaves_it_at_exit(tmp_path):
    script = tmp_path / "join_and_exit.py"
    script.write_text(JOIN_AND_EXIT)
    (out,) = launch([*TORCHRUN, str(script)], cwd=tmp_path)  # exit code 0 on both ranks (checked by launch)
    assert sorted(ln for ln in out.splitlines() if " at exit " in ln) == [
        f"[rank {r}] at exit the group is left: True" for r in (0, 1)
    ]


def test_without_torchrun_the_context_changes_nothing(monkeypatch):
    from napari_bioflow.engine.train.distributed import Distributed, setup

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = setup("cpu", 1)
    assert (ctx.enabled, ctx.is_main, ctx.rank, ctx.world_size, ctx.device) == (False, True, 0, 1, "cpu")
    x, y = torch.zeros(3, 1, 4, 4), torch.zeros(3, 4, 4)
    model = torch.nn.Conv2d(1, 1, 1)
    assert ctx.shard(x, y) == (x, y, 1.0) and ctx.wrap(model) is model and ctx.loss_weight(1.0) == 1.0
    assert ctx.any(True) and not ctx.any(False) and ctx.from_main(lambda: 7) == 7
    assert ctx.global_loss(torch.tensor(0.25), 1.0) == 0.25
    assert Distributed().is_main


def test_a_batch_smaller_than_the_process_count_is_refused(monkeypatch):
    from napari_bioflow.engine.errors import InputError
    from napari_bioflow.engine.train.distributed import setup

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(InputError, match="batch_size is 2 but there are 4 processes"):
        setup("cpu", 2)
