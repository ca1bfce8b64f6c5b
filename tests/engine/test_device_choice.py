"""`device: cuda:N`: the config takes auto, cpu, cuda and cuda:N; a GPU this machine does not have is one sentence
when the run starts (CLI: exit 2, nothing written); auto and cpu keep working; the docks' choices list the GPUs."""

from __future__ import annotations

import pytest
import torch
from helpers import crop_folders, tiny_config

from napari_bioflow.cli import main
from napari_bioflow.config import RunConfig
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.train.devices import device_choices, resolve_device


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two (pretend) GPUs, for what is decided before anything runs on them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Test GPU {i}")


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_config_takes_the_device_forms(device):
    assert RunConfig.from_dict({"device": device}).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:-1", "cuda1", "CUDA:0", "cpu:0"])
def test_config_refuses_other_names_in_one_sentence(device):
    with pytest.raises(InputError) as e:
        RunConfig.from_dict({"device": device}, source="my.yaml")
    assert str(e.value) == (
        f"my.yaml: field 'device': device '{device}' must be auto, cpu, cuda or cuda:N (N: a GPU's number, from 0)."
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_gpu_this_machine_lacks_is_refused_and_cpu_auto_work():
    with pytest.raises(InputError, match=r"^device is 'cuda:1' but this machine has no CUDA GPU; use 'auto', 'cpu'"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"


def test_gpu_numbers_checked_against_the_gpus_found(two_gpus):
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("auto") == "cuda"
    with pytest.raises(InputError) as e:
        resolve_device("cuda:2")
    assert str(e.value) == (
        "device is 'cuda:2' but this machine has 2 CUDA GPU(s), cuda:0 to cuda:1; use 'auto', 'cpu' or a GPU it has."
    )
    assert device_choices() == [
        ("auto (a GPU when there is one)", "auto"),
        ("cpu", "cpu"),
        ("cuda:0 (Test GPU 0)", "cuda:0"),
        ("cuda:1 (Test GPU 1)", "cuda:1"),
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cli_train_refuses_a_missing_gpu_before_writing(tmp_path, capsys):
    raw, lab = crop_folders(tmp_path / "data", n=2, size=96)
    cfg = tiny_config(tmp_path / "runs", raw, lab)
    path = cfg.save(tmp_path / "c.yaml")
    assert main(["train", str(path), "--set", "device=cuda:3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device is 'cuda:3' but this machine has no CUDA GPU" in err
    assert not (tmp_path / "runs").exists()
    assert main(["train", str(path), "--set", "device=auto"]) == 0  # auto still trains (on the CPU here)
    assert (tmp_path / "runs" / "tiny" / "checkpoints" / "tiny_1-checkpoint-best.pth").is_file()


def test_cli_batch_refuses_a_malformed_device(tmp_path, capsys):
    assert main(["batch", "--checkpoint", str(tmp_path / "x.pth"), "--input", str(tmp_path), "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device 'gpu' must be auto, cpu, cuda or cuda:N" in err
