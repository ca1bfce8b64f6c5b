"""`normalization: custom` (issue 12 item 12): the mean and std are given as numbers, per-channel lists or .npy files,
written beside the run as normalization_mean_value.npy / normalization_std_value.npy (the reference pages' names),
stored in the checkpoint and used again at prediction. Real BBBC007 crops."""

import numpy as np
import pytest
import tifffile
import torch
from helpers import crop_folders, run_all, tiny_config, tree

from napari_bioflow.config import RunConfig
from napari_bioflow.engine.data.normalize import Normalizer, normalizer_for
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.predict.inference import predict_array
from napari_bioflow.engine.train import Trainer
from napari_bioflow.engine.train.checkpoint import load_model


def test_custom_values_from_numbers_lists_and_npy_files(tmp_path):
    raws = [np.zeros((8, 8, 3), np.uint8)]
    np.save(tmp_path / "mean.npy", np.array([10.0, 20.0, 30.0]))
    np.save(tmp_path / "std.npy", np.float32(4.0))  # a scalar, as BiaPy writes it: every channel
    data = RunConfig.from_dict(
        {
            "data": {
                "in_channels": 3,
                "normalization": "custom",
                "custom_mean": str(tmp_path / "mean.npy"),
                "custom_std": str(tmp_path / "std.npy"),
            }
        }
    ).data
    norm = normalizer_for(raws, data)
    assert (norm.mode, norm.offset, norm.scale) == ("custom", [10.0, 20.0, 30.0], [4.0, 4.0, 4.0])
    x = np.full((2, 2, 3), 50, np.uint8)
    assert np.allclose(norm(x)[0, 0], [10.0, 7.5, 5.0])
    data.custom_mean, data.custom_std = "1, 2, 3", 2  # text as the dock's field gives it
    assert normalizer_for(raws, data).offset == [1.0, 2.0, 3.0]
    for mean, std, words in (
        ([1.0, 2.0], 1.0, r"data.custom_mean must hold one finite number or one per channel \(3\), not \[1.0, 2.0\]"),
        (str(tmp_path / "nope.npy"), 1.0, r"data.custom_mean names .*nope.npy, which does not exist"),
        (0.0, -1.0, r"data.custom_std must be positive"),
    ):
        data.custom_mean, data.custom_std = mean, std
        with pytest.raises(InputError, match=words):
            normalizer_for(raws, data)
    (tmp_path / "text.npy").write_text("not numpy")
    data.custom_mean, data.custom_std = str(tmp_path / "text.npy"), 1.0
    with pytest.raises(InputError, match=r"data.custom_mean: .*text.npy cannot be read as a .npy file of numbers"):
        normalizer_for(raws, data)
    with pytest.raises(InputError, match="normalization: custom needs data.custom_mean and data.custom_std"):
        RunConfig.from_dict({"data": {"normalization": "custom", "custom_mean": 1.0}})


def test_custom_normalization_is_written_stored_and_reused_at_prediction(tmp_path):
    raw_dir, label_dir = crop_folders(tmp_path / "data", n=3, size=96)
    np.save(tmp_path / "mean.npy", np.array([21.5]))
    cfg = tiny_config(
        tmp_path / "out",
        raw_dir,
        label_dir,
        data={"normalization": "custom", "custom_mean": str(tmp_path / "mean.npy"), "custom_std": 17.0},
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    results = trainer.experiment.results
    assert np.load(results / "normalization_mean_value.npy").tolist() == [21.5]
    assert np.load(results / "normalization_std_value.npy").tolist() == [17.0]
    ckpt = torch.load(reports[-1].checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["normalization"] == {"mode": "custom", "offset": [21.5], "scale": [17.0]}
    loaded = load_model(reports[-1].checkpoint)
    assert loaded.normalizer == Normalizer("custom", [21.5], [17.0])
    image = tifffile.imread(sorted(raw_dir.iterdir())[0])
    used = predict_array(loaded, image)
    loaded.normalizer = Normalizer("meanstd", [21.5], [17.0])  # the same numbers under another name: same output
    assert np.allclose(predict_array(loaded, image), used, atol=1e-6)
    loaded.normalizer = Normalizer("meanstd", [0.0], [1.0])  # other numbers: another output
    assert not np.allclose(predict_array(loaded, image), used, atol=1e-3)


def test_other_modes_write_no_files_and_a_bad_file_stops_before_the_run(tmp_path):
    raw_dir, label_dir = crop_folders(tmp_path / "data", n=2, size=96)
    trainer = Trainer(tiny_config(tmp_path / "out", raw_dir, label_dir, data={"val_split": 0.0}))
    run_all(trainer)
    assert not list(trainer.experiment.results.glob("normalization_*.npy"))
    cfg = tiny_config(
        tmp_path / "bad",
        raw_dir,
        label_dir,
        data={"normalization": "custom", "custom_mean": str(tmp_path / "missing.npy"), "custom_std": 1.0},
    )
    with pytest.raises(InputError, match=r"data.custom_mean names .*missing.npy, which does not exist\."):
        run_all(Trainer(cfg))
    assert tree(tmp_path / "bad") == {}
