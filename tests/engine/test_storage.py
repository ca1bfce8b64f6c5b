"""Reliability of what is written (issue 9, points 3, 4, 6 and 8): run names that stay inside the output folder,
checkpoints whose damaged weights are refused, a full disk that is one sentence (not a traceback nor a SIGBUS) and
leaves no `.part` file, and exit codes that tell a batch with failed files from a finished one.

The full-disk tests mount small tmpfs file systems (root only; skipped with the reason elsewhere)."""

import re
import shlex
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import BBBC, crop_folders, read_csv, tiny_config, tree

from napari_bioflow.cli import main
from napari_bioflow.config import RunConfig
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.experiment import new_experiment
from napari_bioflow.engine.storage import DiskFull, reserve
from napari_bioflow.engine.train import Trainer
from napari_bioflow.engine.train.checkpoint import CHECKSUM, read_checkpoint, read_weights, save_checkpoint

RULE = "letters, digits, '-', '_' and '.', not only dots"


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four real 64x64 BBBC007 training pairs, and one whole 450x450 BBBC007 test image to predict."""
    root = tmp_path_factory.mktemp("storage_data")
    train = crop_folders(root / "train", n=4, size=64)
    big = root / "big"
    big.mkdir()
    shutil.copy(BBBC / "test" / "raw" / "A9_A9_p5d.tif", big)
    return {"train": train, "big": big}


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A real checkpoint of a tiny 2D segmentation run."""
    trainer = Trainer(
        tiny_config(tmp_path_factory.mktemp("storage_ckpt") / "runs", *data["train"], data={"patch_size": [32, 32]})
    )
    for _ in trainer.run():
        pass
    return trainer.best_checkpoint


def config_file(folder: Path, data, out: Path, **sections) -> Path:
    cfg = tiny_config(out, *data["train"], data={"patch_size": [32, 32]}, **sections)
    return cfg.save(folder / "tiny.yaml")


def cli(capsys, argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def parts(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if ".part" in p.name]


@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(size, name) mounts a tmpfs of `size` (mount's syntax: 2m, 512k) at tmp_path/name; unmounted after."""
    mounted = []

    def mount(size: str, name: str = "disk") -> Path:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.skip(f"a small tmpfs cannot be mounted here to fill a disk ({proc.stderr.strip() or 'not root'})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """A user's file that fills `disk` up to `leave` bytes free."""
    free = shutil.disk_usage(disk).free
    path = disk / "user_file.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, max(0, free - leave), dtype=np.uint8).tobytes())
    return path


# ----------------------------------------------------------------------------------------------- 3. run names
@pytest.mark.parametrize("name", ["..", ".", "a/b", "../a", "a\\b", "my run"])
def test_a_run_name_from_set_that_leaves_the_output_folder_is_refused(tmp_path, capsys, data, name):
    work = tmp_path / "work"
    work.mkdir()
    path = config_file(work, data, work / "parent" / "out")
    before = tree(tmp_path)
    code, _, err = cli(capsys, ["train", path, "--set", f"name={name}"])
    assert code == 2
    one_line(err)
    assert f"(from --set name={name})" in err and f"the experiment name {name!r} may hold only {RULE}" in err
    assert "pattern" not in err and "[" not in err  # said in words, not as a regex
    assert tree(tmp_path) == before and not (work / "parent").exists()


def test_predict_with_the_run_name_dotdot_writes_nothing_beside_the_output_folder(tmp_path, capsys, data, checkpoint):
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "mine.txt").write_text("a user's file")
    before = tree(tmp_path)
    code, _, err = cli(
        capsys,
        [
            "predict",
            "--checkpoint",
            checkpoint,
            "--input",
            data["train"][0],
            "--output",
            parent / "out",
            "--set",
            "name=..",
        ],
    )
    assert code == 2 and "(from --set name=..)" in one_line(err) and RULE in err
    assert tree(tmp_path) == before and sorted(p.name for p in parent.iterdir()) == ["mine.txt"]


def test_a_run_name_in_the_config_file_blames_the_file(tmp_path, capsys, data):
    path = config_file(tmp_path, data, tmp_path / "out")
    path.write_text(path.read_text().replace("name: tiny", "name: ..", 1))
    code, _, err = cli(capsys, ["train", path])
    assert code == 2
    assert one_line(err).startswith(
        f"napari-bioflow: error: {path}: field 'name': the experiment name '..' may hold only"
    )
    assert "--set" not in err and not (tmp_path / "out").exists() and not (tmp_path / "results").exists()


def test_batch_refuses_a_run_name_that_leaves_the_output_folder(tmp_path, capsys, data, checkpoint):
    code, _, err = cli(
        capsys,
        [
            "batch",
            "--checkpoint",
            checkpoint,
            "--input",
            data["train"][0],
            "--name",
            "..",
            "--output",
            tmp_path / "out",
            "--device",
            "cpu",
        ],
    )
    assert code == 2 and "the experiment name '..' may hold only" in one_line(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\x00b", "tab\there", "", "x" * 201])
def test_new_experiment_refuses_unsafe_names_itself(tmp_path, name):
    """Defence in depth: a caller that bypasses the config's validation (model_copy) still cannot escape."""
    with pytest.raises(InputError) as e:
        new_experiment(tmp_path / "out", name)
    assert str(e.value).startswith(f"No run was created in {tmp_path / 'out'}: the experiment name")
    assert RULE in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_dashes_and_dots_inside_a_name_are_fine(tmp_path):
    cfg = RunConfig.from_dict({"name": "my-run.v2_b"})
    exp = new_experiment(tmp_path, cfg.name)
    assert exp.results == tmp_path / "my-run.v2_b" / "results" / "my-run.v2_b_1" and exp.results.is_dir()


# ----------------------------------------------------------------------------------------------- 4. checksums
def tensor_bytes_offset(path: Path, entry_suffix: str) -> tuple[int, int]:
    """(offset, size) of the raw bytes of a zip entry (torch.save stores tensors uncompressed as data/N)."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(entry_suffix))
    assert info.compress_type == zipfile.ZIP_STORED
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def damage(checkpoint: Path, dest: Path) -> str:
    """Copy the checkpoint and flip 400 bytes inside the storage of its first weight tensor of at least 400 bytes,
    in place (the zip still reads); return that tensor's name."""
    shutil.copy(checkpoint, dest)
    weights = read_checkpoint(checkpoint)["state_dict"]
    # the state dict is pickled first, so its tensors are the storages data/0, data/1, ... in its order
    index, name = next((i, k) for i, (k, v) in enumerate(weights.items()) if v.nbytes >= 400)
    offset, size = tensor_bytes_offset(dest, f"/data/{index}")
    assert size == weights[name].nbytes
    with open(dest, "r+b") as f:
        f.seek(offset)
        chunk = bytearray(f.read(400))
        f.seek(offset)
        f.write(bytes(b ^ 0x5A for b in chunk))
    return name


def test_a_checkpoint_with_damaged_weights_is_refused(tmp_path, capsys, data, checkpoint):
    damaged = tmp_path / "damaged.pth"
    name = damage(checkpoint, damaged)
    # the damage is real and torch itself does not notice it: the file loads, with other weights
    loaded = torch.load(damaged, map_location="cpu", weights_only=False)
    assert not torch.equal(loaded["state_dict"][name], read_checkpoint(checkpoint)["state_dict"][name])
    before = tree(tmp_path)
    code, out, err = cli(
        capsys, ["predict", "--checkpoint", damaged, "--input", data["train"][0], "--output", tmp_path / "out"]
    )
    assert code == 2
    assert one_line(err) == (
        f"napari-bioflow: error: Checkpoint {damaged} is damaged: its weights do not match the "
        f"checksum stored when it was saved (tensor '{name}' differs); use an intact copy or "
        f"train again.\n"
    )
    assert out == "" and tree(tmp_path) == before and not (tmp_path / "out").exists()
    # every reader of our checkpoints checks: resuming, starting a model from it
    for read in (read_checkpoint, read_weights):
        with pytest.raises(InputError, match="is damaged"):
            read(damaged)


def test_checkpoints_store_a_checksum_and_old_ones_without_it_still_load(tmp_path, capsys, data, checkpoint):
    ckpt = read_checkpoint(checkpoint)
    assert len(ckpt[CHECKSUM]) == len(ckpt["state_dict"])
    del ckpt[CHECKSUM]  # as saved by earlier versions
    old = tmp_path / "old.pth"
    torch.save(ckpt, old)
    code, out, err = cli(
        capsys, ["predict", "--checkpoint", old, "--input", data["train"][0], "--output", tmp_path / "out"]
    )
    assert code == 0, err
    assert err == "" and "results:" in out


# ----------------------------------------------------------------------------------------------- 6. a full disk
def test_training_onto_a_full_disk_is_one_sentence(tmp_path, capsys, data, tmpfs):
    disk = tmpfs("2m")
    mine = fill(disk, 200 * 1024)  # room for the run's folders and config, not for a checkpoint
    before = tree(disk)
    path = config_file(tmp_path, data, disk / "out")
    code, _, err = cli(capsys, ["train", path])
    assert code == 2
    folder = disk / "out" / "tiny" / "checkpoints"
    assert one_line(err).startswith(
        f"napari-bioflow: error: The disk holding {folder} is full: checkpoint "
        f"tiny_1-checkpoint-best.pth could not be written (it needs "
    )
    assert err.endswith("; free some space or choose another output folder.\n")
    assert parts(disk) == [] and not (folder.exists() and list(folder.iterdir()))  # no checkpoint, whole or part
    assert {k: v for k, v in tree(disk).items() if k in before} == before and mine.is_file()


def test_a_checkpoint_write_cut_short_by_the_disk_leaves_the_earlier_file(tmp_path, tmpfs, checkpoint, monkeypatch):
    """The free-space check passes (no margin), so torch.save itself meets ENOSPC half way through the file."""
    from napari_bioflow.engine import storage

    monkeypatch.setattr(storage, "MARGIN_BYTES", 0)
    disk = tmpfs("1m")
    earlier = disk / "run-checkpoint-last.pth"
    shutil.copy(checkpoint, earlier)
    payload = {k: v for k, v in read_checkpoint(checkpoint).items() if k not in ("format", CHECKSUM)}
    payload["notes"] = "n" * 600_000  # pickled, not a tensor: the file outgrows the space the check counts on
    fill(disk, 400 * 1024)
    before = tree(disk)
    with pytest.raises(DiskFull) as e:
        save_checkpoint(earlier, payload)
    assert str(e.value) == (
        f"The disk holding {disk} is full: checkpoint run-checkpoint-last.pth could not be "
        f"written; free some space or choose another output folder."
    )
    assert tree(disk) == before and parts(disk) == []
    read_checkpoint(earlier)  # the earlier checkpoint is whole


def test_space_is_reserved_before_a_file_is_memory_mapped(tmpfs):
    disk = tmpfs("1m")
    with open(disk / "big.tif.part", "wb") as f:
        with pytest.raises(DiskFull, match=re.escape(f"The disk holding {disk} is full: big.tif could not be written")):
            reserve(f.fileno(), 4 * 2**20, disk, "big.tif")
        reserve(f.fileno(), 64 * 1024, disk, "big.tif")  # what fits is allocated
    assert (disk / "big.tif.part").stat().st_blocks * 512 >= 64 * 1024


def run_cli_process(argv, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in its own process: a write through a memory mapping onto a full disk kills it with SIGBUS (exit
    135), which must fail this test rather than kill the test session."""
    return subprocess.run(
        [sys.executable, "-m", "napari_bioflow.cli", *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_onto_a_full_disk_is_one_sentence_not_a_sigbus(tmp_path, data, checkpoint, tmpfs):
    disk = tmpfs("1m")  # the 450x450 probabilities alone are 1.6 MB of float32
    (disk / "mine.txt").write_text("a user's file")
    before = tree(disk)
    proc = run_cli_process(
        ["predict", "--checkpoint", checkpoint, "--input", data["big"], "--output", disk / "out"], tmp_path
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = one_line(proc.stderr)
    assert err.startswith(f"napari-bioflow: error: The disk holding {disk / 'out'}") and " is full: " in err
    assert err.endswith("; free some space or choose another output folder.\n")
    assert parts(disk) == []
    assert {k: v for k, v in tree(disk).items() if k in before} == before


def test_batch_onto_a_full_disk_stops_with_one_sentence_and_resumes(tmp_path, data, checkpoint, tmpfs):
    disk = tmpfs("4m")
    mine = fill(disk, 1024 * 1024)
    proc = run_cli_process(
        ["batch", "--checkpoint", checkpoint, "--input", data["big"], "--output", disk / "out", "--device", "cpu"],
        tmp_path,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    run_dir = disk / "out" / "batch" / "results" / "batch_1"
    err = one_line(proc.stderr)
    assert err.startswith(f"napari-bioflow: error: The disk holding {run_dir}") and " is full: " in err
    assert err.endswith(f"; free some space, then continue with: napari-bioflow batch --resume {run_dir}.\n")
    assert parts(disk) == [] and mine.is_file()
    mine.unlink()  # space freed: the run goes on in place, as the sentence says
    proc = run_cli_process(["batch", "--resume", run_dir, "--device", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["status"] for r in read_csv(run_dir / "batch_summary.csv")] == ["done"]
    assert tifffile.imread(run_dir / "per_image" / "A9_A9_p5d.tif").shape == (2, 450, 450)
    assert parts(disk) == []


def test_a_resumed_batch_removes_the_part_files_its_interruption_left(tmp_path, capsys, data, checkpoint):
    raw_dir = data["train"][0]
    code, _, err = cli(
        capsys,
        ["batch", "--checkpoint", checkpoint, "--input", raw_dir, "--output", tmp_path / "out", "--device", "cpu"],
    )
    assert code == 0, err
    run_dir = tmp_path / "out" / "batch" / "results" / "batch_1"
    finished = tree(run_dir)
    stale = [run_dir / "per_image" / "img_x.tif.part", run_dir / "batch_summary.csv.part"]
    for p in stale:
        p.write_bytes(b"half a file")
    code, _, err = cli(capsys, ["batch", "--resume", run_dir, "--device", "cpu"])
    assert code == 0, err
    assert parts(run_dir) == []
    after = tree(run_dir)
    assert {k: v for k, v in after.items() if k.startswith("per_image")} == {
        k: v for k, v in finished.items() if k.startswith("per_image")
    }  # finished files untouched


# ----------------------------------------------------------------------------------------------- 8. exit codes
def test_a_batch_with_failed_files_exits_3(tmp_path, capsys, data, checkpoint):
    folder = tmp_path / "in"
    shutil.copytree(data["train"][0], folder)
    (folder / "broken.tif").write_bytes(b"II*\x00 not really a TIFF")
    before = tree(folder)
    code, out, err = cli(
        capsys,
        ["batch", "--checkpoint", checkpoint, "--input", folder, "--output", tmp_path / "out", "--device", "cpu"],
    )
    assert code == 3, err
    assert "FAILED broken.tif" in out and "finished with failures: exit status 3" in out
    rows = {r["image"]: r["status"] for r in read_csv(next((tmp_path / "out").rglob("batch_summary.csv")))}
    assert rows.pop("broken.tif") == "failed" and set(rows.values()) == {"done"}
    # every file failing is a failed batch too, not a success
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    shutil.copy(folder / "broken.tif", only_bad)
    code, out, err = cli(
        capsys,
        ["batch", "--checkpoint", checkpoint, "--input", only_bad, "--output", tmp_path / "out", "--device", "cpu"],
    )
    assert code == 3 and "1 failed" in out
    assert tree(folder) == before


def test_exit_status_3_is_documented(capsys):
    with pytest.raises(SystemExit) as e:
        main(["batch", "--help"])
    assert e.value.code == 0
    assert "3 finished, but some files failed" in " ".join(capsys.readouterr().out.split())
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "exit status 3" in readme


class _InterruptAt:
    """sys.stdout that raises KeyboardInterrupt (as Ctrl-C does, in the main thread) once a line starts with `when`."""

    def __init__(self, stream, when: str):
        self.stream, self.when = stream, when

    def write(self, text):
        self.stream.write(text)
        if text.startswith(self.when):
            self.when = "\0never"
            raise KeyboardInterrupt

    def __getattr__(self, name):
        return getattr(self.stream, name)


def test_an_interrupted_training_names_its_best_checkpoint_and_how_to_resume(tmp_path, capsys, data, monkeypatch):
    path = config_file(tmp_path, data, tmp_path / "runs", train={"epochs": 3})
    monkeypatch.setattr(sys, "stdout", _InterruptAt(sys.stdout, "epoch 1/3"))
    code, out, err = cli(capsys, ["train", path, "--set", "train.learning_rate=0.002"])
    monkeypatch.undo()
    assert code == 130
    ckpts = tmp_path / "runs" / "tiny" / "checkpoints"
    best, last = ckpts / "tiny_1-checkpoint-best.pth", ckpts / "tiny_1-checkpoint-last.pth"
    command = shlex.join(
        ["napari-bioflow", "train", str(path), "--set", "train.learning_rate=0.002", "--set", f"train.resume={last}"]
    )
    assert one_line(err) == (
        f"napari-bioflow: interrupted; the best checkpoint is {best}; resume from the last epoch with: {command}\n"
    )
    assert best.is_file() and last.is_file() and parts(tmp_path / "runs") == []
    # the command it gives resumes: the new run goes on from epoch 2
    code, out, err = cli(capsys, shlex.split(command)[1:])
    assert code == 0, err
    assert "epoch 2/3" in out and "epoch 1/3" not in out
    log = read_csv(tmp_path / "runs" / "tiny" / "results" / "tiny_2" / "train_logs" / "tiny_2_log.csv")
    assert [int(r["epoch"]) for r in log] == [2, 3]


def test_a_training_interrupted_before_its_first_checkpoint_says_so(tmp_path, capsys, data, monkeypatch):
    path = config_file(tmp_path, data, tmp_path / "runs")
    monkeypatch.setattr(sys, "stdout", _InterruptAt(sys.stdout, "run tiny_1 in"))
    code, _, err = cli(capsys, ["train", path])
    monkeypatch.undo()
    assert code == 130
    assert one_line(err) == (
        "napari-bioflow: interrupted; training stopped before any checkpoint was written; run the "
        "same command to start again\n"
    )
    assert parts(tmp_path / "runs") == [] and not list((tmp_path / "runs").rglob("*.pth"))
