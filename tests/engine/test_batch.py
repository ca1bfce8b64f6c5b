"""Batch-folder prediction (engine/batch/) and the `napari-bioflow batch` command, on real
crops of the shipped BBBC007 sample in every input format (TIFF, PNG, zarr, OME-Zarr) with a tiny trained model."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from helpers import BBBC, crop_folders, labels_expected, read_csv, tiny_config, tree, write_image

from napari_bioflow.cli import main
from napari_bioflow.engine.batch import (
    BatchRequest,
    BatchRun,
    BatchStarted,
    BatchSummary,
    FileDone,
    FileFailed,
    FileProgress,
    FileStarted,
    marker_path,
    run_batch,
)
from napari_bioflow.engine.batch.results import lazy_results, stacked_results
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.predict.inference import predict_files
from napari_bioflow.engine.train.checkpoint import load_model

STEMS = ["a_tiff", "b_png", "c_zarr", "d_ome"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from napari_bioflow.engine.train import Trainer

    root = tmp_path_factory.mktemp("batch_ckpt")
    raw, label = crop_folders(root / "train", "train", n=4, size=128)
    trainer = Trainer(tiny_config(root / "runs", raw, label, train={"epochs": 2, "steps_per_epoch": 4}))
    for _ in trainer.run():
        pass
    return trainer.best_checkpoint


def crop(split: str, name: str, y: int, x: int, h: int, w: int):
    raw = tifffile.imread(BBBC / split / "raw" / name)[y : y + h, x : x + w]
    label = tifffile.imread(BBBC / split / "label" / name)[y : y + h, x : x + w]
    return np.ascontiguousarray(raw), np.ascontiguousarray(label)


def write_ome_zarr(path: Path, data: np.ndarray) -> Path:
    """An OME-Zarr image (NGFF 0.4 multiscales): full resolution at "0" with T and C axes of length 1, then "1"."""
    group = zarr.open_group(str(path), mode="w")
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": [{"name": a} for a in "tcyx"], "datasets": [{"path": "0"}, {"path": "1"}]}
    ]
    full = group.create_array("0", shape=(1, 1, *data.shape), dtype=data.dtype, chunks=(1, 1, 64, 64))
    full[...] = data[None, None]
    half = group.create_array("1", shape=(1, 1, *(s // 2 for s in data.shape)), dtype=data.dtype)
    half[...] = data[None, None, ::2, ::2]
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """raw/ holds one image per format (sizes differ), labels/ their masks; also the arrays, for the references."""
    root = tmp_path_factory.mktemp("batch_data")
    images = {
        "a_tiff.tif": crop("test", "A9_A9_p5d.tif", 100, 100, 160, 160),
        "b_png.png": crop("test", "f96_17_17P1_POS0006_D_1UL.tif", 40, 60, 144, 176),
        "c_zarr.zarr": crop("train", "A9_A9_p10d.tif", 200, 150, 128, 192),
        "d_ome.ome.zarr": crop("train", "f9620_20P1_POS0005_D_1UL.tif", 50, 50, 176, 144),
    }
    for (name, (raw, label)), stem in zip(images.items(), STEMS):
        if name.endswith(".ome.zarr"):
            write_ome_zarr(root / "raw" / name, raw)
        else:
            write_image(root / "raw" / name, raw)
        write_image(root / "labels" / f"{stem}.tif", label)
    return {"raw": root / "raw", "labels": root / "labels", "arrays": dict(zip(STEMS, images.values())), "root": root}


@pytest.fixture(scope="module")
def reference(folder, checkpoint, tmp_path_factory):
    """The single-image path (predict_files, as `napari-bioflow predict`) on TIFF copies of the same arrays."""
    root = tmp_path_factory.mktemp("batch_ref")
    pairs = []
    for stem, (raw, label) in folder["arrays"].items():
        pairs.append(
            (write_image(root / "raw" / f"{stem}.tif", raw), write_image(root / "label" / f"{stem}.tif", label))
        )
    out = root / "out"
    results = list(predict_files(load_model(checkpoint, "cpu"), pairs, out))
    return {"out": out, "metrics": {Path(r.name).name.split(".")[0]: r.metrics for r in results}}


def run_all(request: BatchRequest, on_report=None) -> list:
    run = BatchRun(request)
    reports = []
    for r in run.run():
        reports.append(r)
        if on_report is not None:
            on_report(run, r)
    return reports


def of(reports, cls) -> list:
    return [r for r in reports if isinstance(r, cls)]


def request(folder, checkpoint, out, **kw) -> BatchRequest:
    kw = {"labels_dir": folder["labels"], **kw}
    return BatchRequest(checkpoint=checkpoint, input_dir=folder["raw"], output_dir=out, device="cpu", **kw)


def assert_same_outputs(run_a: Path, run_b: Path, stems=STEMS, atol=1e-6) -> None:
    for stem in stems:
        prob_a = tifffile.imread(run_a / "per_image" / f"{stem}.tif")
        prob_b = tifffile.imread(run_b / "per_image" / f"{stem}.tif")
        assert prob_a.shape == prob_b.shape
        np.testing.assert_allclose(prob_a, prob_b, atol=atol, err_msg=stem)
        np.testing.assert_array_equal(
            tifffile.imread(run_a / "per_image_binarized" / f"{stem}.tif"),
            tifffile.imread(run_b / "per_image_binarized" / f"{stem}.tif"),
            err_msg=stem,
        )


# --------------------------------------------------------------------------------------------------


def test_batch_predicts_every_format_into_the_experiment_layout(folder, checkpoint, reference, tmp_path):
    reports = run_all(request(folder, checkpoint, tmp_path))
    started, summary = reports[0], reports[-1]
    assert isinstance(started, BatchStarted) and isinstance(summary, BatchSummary)
    run_dir = started.run_dir
    assert run_dir == tmp_path / "batch" / "results" / "batch_1" and started.mode == "this process"
    assert started.config_path == tmp_path / "batch" / "config_files" / "batch_1.yaml" and started.config_path.is_file()
    assert started.names == ["a_tiff.tif", "b_png.png", "c_zarr.zarr", "d_ome.ome.zarr"]
    done = of(reports, FileDone)
    assert [d.stem for d in done] == STEMS and not of(reports, FileFailed)
    assert summary.done == started.names and not summary.failed and not summary.cancelled
    # every file: started (with a live dask array over the prediction being written), progress, done, in order
    kinds = [type(r).__name__ for r in reports if isinstance(r, (FileStarted, FileProgress, FileDone))]
    assert kinds == ["FileStarted", "FileProgress", "FileDone"] * 4
    assert all(isinstance(r.live, da.Array) for r in of(reports, FileStarted))
    overall = [r.overall for r in reports if isinstance(r, (FileProgress, FileDone))]
    assert overall == sorted(overall) and overall[-1] == 1.0 and done[-1].eta_seconds == 0
    for stem, d in zip(STEMS, done):
        raw, label = folder["arrays"][stem]
        prob = tifffile.imread(run_dir / "per_image" / f"{stem}.tif")
        labels = tifffile.imread(run_dir / "per_image_binarized" / f"{stem}.tif")
        assert prob.shape == (2, *raw.shape) and prob.dtype == np.float32
        np.testing.assert_allclose(prob.sum(0), 1, atol=1e-4)
        np.testing.assert_array_equal(labels, labels_expected(prob, checkpoint))
        assert 0 < labels.mean() < 1  # the model finds nuclei and background
        assert set(d.outputs) == {"probabilities", "labels"}
        np.testing.assert_array_equal(np.asarray(zarr.open_array(str(d.outputs["labels"]), mode="r")), labels)
        assert marker_path(run_dir, stem).is_file()
        # the same values as the single-image path
        np.testing.assert_allclose(prob, tifffile.imread(reference["out"] / "per_image" / f"{stem}.tif"), atol=1e-6)
        assert d.metrics == pytest.approx(reference["metrics"][stem])
    rows = read_csv(run_dir / "metrics.csv")
    assert [r["image"] for r in rows] == [*started.names, "ALL (pixels pooled)"]
    assert float(rows[0]["iou_foreground"]) == pytest.approx(reference["metrics"]["a_tiff"]["iou_foreground"])
    assert summary.metrics_csv == run_dir / "metrics.csv" and summary.predictions_csv is None
    assert [r["status"] for r in read_csv(run_dir / "batch_summary.csv")] == ["done"] * 4
    pixels = sum(a[0].size for a in folder["arrays"].values())
    assert summary.megapixels == pytest.approx(pixels / 1e6) and summary.files_per_second > 0
    assert not (run_dir / "per_image" / "a_tiff.zarr" / "accumulator").exists()  # running sums dropped


def test_results_open_lazily(folder, checkpoint, tmp_path):
    summary = run_all(request(folder, checkpoint, tmp_path, labels_dir=None))[-1]
    results = lazy_results(summary.run_dir)
    assert list(results) == ["a_tiff.tif", "b_png.png", "c_zarr.zarr", "d_ome.ome.zarr"]
    for (_name, arrays), stem in zip(results.items(), STEMS):
        assert isinstance(arrays["labels"], da.Array) and isinstance(arrays["probabilities"], da.Array)
        np.testing.assert_array_equal(
            arrays["labels"].compute(), tifffile.imread(summary.run_dir / "per_image_binarized" / f"{stem}.tif")
        )
    assert not (summary.run_dir / "metrics.csv").exists()  # no labels, no metrics
    # one stacked array per output over the files of the first file's shape (here only that one)
    names, stacked = stacked_results(summary.run_dir)
    assert names == ["a_tiff.tif"] and stacked["probabilities"].shape == (1, 2, 160, 160)


def test_unreadable_files_are_skipped_and_named_in_the_summary(folder, checkpoint, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(folder["raw"], data / "raw")
    (data / "raw" / "e_broken.tif").write_bytes(b"II*\x00 this is not really a TIFF")
    write_image(data / "raw" / "f_rgb.tif", np.zeros((64, 64, 3), np.uint8))  # 3 channels, the model takes 1
    reports = run_all(
        BatchRequest(checkpoint=checkpoint, input_dir=data / "raw", output_dir=tmp_path / "out", device="cpu")
    )
    failed = of(reports, FileFailed)
    assert [f.name for f in failed] == ["e_broken.tif", "f_rgb.tif"]
    assert "e_broken.tif" in failed[0].reason and "cannot be read" in failed[0].reason
    assert (
        "f_rgb.tif" in failed[1].reason and "3 channel(s)" in failed[1].reason and str(checkpoint) in failed[1].reason
    )
    assert all(f.reason.count(". ") == 0 for f in failed)  # one sentence each
    summary = reports[-1]
    assert len(summary.done) == 4 and [n for n, _ in summary.failed] == ["e_broken.tif", "f_rgb.tif"]
    assert "2 failed (e_broken.tif, f_rgb.tif)" in summary.text()
    rows = {r["image"]: r for r in read_csv(summary.run_dir / "batch_summary.csv")}
    assert rows["e_broken.tif"]["status"] == "failed" and "cannot be read" in rows["e_broken.tif"]["reason"]
    assert rows["a_tiff.tif"]["status"] == "done"
    assert not list((summary.run_dir / "per_image").glob("e_broken*")) and not list(
        (summary.run_dir / "per_image").glob("f_rgb*")
    )


def test_cancel_then_resume_skips_finished_files_and_a_plain_rerun_never_overwrites(folder, checkpoint, tmp_path):
    def cancel_after_first(run, report):
        if isinstance(report, FileDone):
            run.cancel()

    first = run_all(request(folder, checkpoint, tmp_path), cancel_after_first)
    summary = first[-1]
    run_dir = summary.run_dir
    assert (
        summary.cancelled
        and summary.done == ["a_tiff.tif"]
        and summary.not_run == ["b_png.png", "c_zarr.zarr", "d_ome.ome.zarr"]
    )
    assert [r["status"] for r in read_csv(run_dir / "batch_summary.csv")] == ["done", "not run", "not run", "not run"]
    # an unfinished attempt at a file left a partial store: the resumed run clears it and redoes the file
    (run_dir / "per_image" / "b_png.zarr" / "accumulator").mkdir(parents=True, exist_ok=True)
    before = tree(run_dir)
    a_files = {k: v for k, v in before.items() if "a_tiff" in k}
    assert "per_image/a_tiff.tif" in a_files and "batch/done/a_tiff.json" in a_files

    resumed = run_all(BatchRequest(resume=run_dir, device="cpu"))
    started, summary = resumed[0], resumed[-1]
    assert started.resumed and started.run_dir == run_dir and started.finished_earlier == ["a_tiff.tif"]
    assert started.to_do == ["b_png.png", "c_zarr.zarr", "d_ome.ome.zarr"]
    assert [d.name for d in of(resumed, FileDone)] == started.to_do
    assert summary.finished_earlier == ["a_tiff.tif"] and not summary.cancelled
    after = tree(run_dir)
    assert {k: after[k] for k in a_files} == a_files  # the finished file's outputs are untouched
    assert [r["image"] for r in read_csv(run_dir / "metrics.csv")] == [*started.names, "ALL (pixels pooled)"]
    assert [r["status"] for r in read_csv(run_dir / "batch_summary.csv")] == ["done earlier", "done", "done", "done"]
    assert len(list((tmp_path / "batch" / "results").iterdir())) == 1  # continued in place

    again = run_all(BatchRequest(resume=run_dir, device="cpu"))  # nothing left to do
    assert again[0].to_do == [] and not of(again, FileDone) and tree(run_dir).keys() == after.keys()
    snapshot = tree(run_dir)
    rerun = run_all(request(folder, checkpoint, tmp_path))  # a plain rerun: a new run id, the earlier run untouched
    assert rerun[0].run_dir.name == "batch_2" and len(of(rerun, FileDone)) == 4
    assert rerun[0].unfinished_earlier is None  # batch_1 finished every file: nothing to point at
    assert {k: v for k, v in tree(run_dir).items() if not k.endswith((".csv",))} == {
        k: v for k, v in snapshot.items() if not k.endswith((".csv",))
    }
    assert tree(run_dir) == snapshot


def test_cancel_stops_after_the_current_tile(folder, checkpoint, tmp_path):
    def cancel_at_first_tile(run, report):
        if isinstance(report, FileProgress):
            run.cancel()

    reports = run_all(
        request(folder, checkpoint, tmp_path, overrides=["predict.tile_size=[32, 32]", "predict.batch_size=1"]),
        cancel_at_first_tile,
    )
    progress = of(reports, FileProgress)
    assert progress[0].total > 20 and progress[-1].done < progress[0].total  # stopped within the first file
    summary = reports[-1]
    assert summary.cancelled and not summary.done and len(summary.not_run) == 4
    assert not marker_path(summary.run_dir, "a_tiff").exists()
    resumed = run_all(BatchRequest(resume=summary.run_dir, device="cpu"))  # the settings travel with the run
    assert resumed[-1].done == resumed[0].names
    assert "tile_size:\n  - 32" in (summary.run_dir.parent.parent / "config_files" / "batch_1.yaml").read_text()


def test_resume_and_setup_mistakes_are_one_sentence(folder, checkpoint, tmp_path):
    def error(**kw) -> str:
        with pytest.raises(InputError) as e:
            BatchRun(BatchRequest(device="cpu", **kw))
        return str(e.value)

    assert "is not a batch run folder" in error(resume=tmp_path)
    assert "does not exist" in error(resume=tmp_path / "nope")
    assert "does not exist" in error(checkpoint=checkpoint, input_dir=tmp_path / "missing", output_dir=tmp_path / "out")
    assert "cannot be read" in error(
        checkpoint=folder["labels"] / "a_tiff.tif", input_dir=folder["raw"], output_dir=tmp_path / "out"
    )
    assert "predict.FIELD" in error(
        checkpoint=checkpoint, input_dir=folder["raw"], output_dir=tmp_path / "out", overrides=["train.epochs=3"]
    )
    assert not (tmp_path / "out").exists()  # nothing written before the checks pass
    summary = run_all(request(folder, checkpoint, tmp_path / "out", labels_dir=None))[-1]
    msg = error(resume=summary.run_dir, checkpoint=folder["labels"] / "b_png.tif")
    assert "was started with checkpoint" in msg and msg.count(". ") == 0


def test_a_per_image_workflow_plugs_in(folder, checkpoint, tmp_path):
    """A workflow that predicts one value per image (classification) brings its own step; the rows go into
    predictions.csv."""
    loaded = load_model(checkpoint, "cpu")

    class OneValuePerImage(type(loaded.workflow)):
        dense = False

        def predict_file(self, loaded, image, name, run_dir, stem, device, target):
            mean = float(np.asarray(image).mean())
            return {"prediction": {"class": int(mean > 40), "mean": round(mean, 3)}}

    loaded.workflow = OneValuePerImage()
    reports = list(
        run_batch(
            BatchRequest(checkpoint=checkpoint, input_dir=folder["raw"], output_dir=tmp_path, device="cpu"), loaded
        )
    )
    summary = reports[-1]
    rows = read_csv(summary.predictions_csv)
    means = {stem: folder["arrays"][stem][0].mean() for stem in STEMS}
    assert [r["image"] for r in rows] == summary.done and len(rows) == 4
    assert [float(r["mean"]) for r in rows] == pytest.approx([round(m, 3) for m in means.values()])
    assert not (summary.run_dir / "per_image").exists()


# a completion marker exactly as the runs before engine/batch became a package wrote it (json.dumps(indent=1))
OLD_MARKER = """{
 "status": "done",
 "name": "a_tiff.tif",
 "raw": "/data/raw/a_tiff.tif",
 "label": "/data/labels/a_tiff.tif",
 "stem": "a_tiff",
 "outputs": {
  "probabilities": "per_image/a_tiff.zarr/probabilities",
  "labels": "per_image/a_tiff.zarr/labels"
 },
 "files": [
  "per_image/a_tiff.tif",
  "per_image_binarized/a_tiff.tif"
 ],
 "metrics": {
  "iou_class_1": 0.8125,
  "mean_iou": 0.875
 },
 "counts": [
  [
   900,
   130
  ],
  [
   1000,
   160
  ]
 ],
 "prediction": null,
 "seconds": 1.25,
 "pixels": 25600
}"""


def test_an_earlier_runs_marker_reads_as_a_record_and_counts_while_its_outputs_are_there(tmp_path):
    """The typed FileRecord keeps the marker format: an earlier run's marker reads into it and writes back the
    same text, and the planner counts its file finished (skipped on resume) only while every output it lists is
    still there."""
    import json

    from napari_bioflow.engine.batch import FileItem, FileRecord
    from napari_bioflow.engine.batch.plan import is_finished

    record = FileRecord.from_json(json.loads(OLD_MARKER))
    assert record.metrics == {"iou_class_1": 0.8125, "mean_iou": 0.875} and record.counts == [[900, 130], [1000, 160]]
    assert json.dumps(record.to_json(), indent=1) == OLD_MARKER
    item = FileItem(0, record.raw, record.label, record.name, record.stem)
    marker_path(tmp_path, "a_tiff").parent.mkdir(parents=True)
    marker_path(tmp_path, "a_tiff").write_text(OLD_MARKER)
    for rel in ["per_image/a_tiff.zarr/probabilities", "per_image/a_tiff.zarr/labels"]:
        (tmp_path / rel).mkdir(parents=True)
    for rel in record.files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert is_finished(tmp_path, item)
    (tmp_path / "per_image_binarized" / "a_tiff.tif").unlink()
    assert not is_finished(tmp_path, item)  # redone by a resumed run


# --------------------------------------------------------------------------------------------------
# dask.distributed


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def test_dask_local_cluster_of_two_workers_equals_one_process(folder, checkpoint, tmp_path):
    single = run_all(request(folder, checkpoint, tmp_path / "single"))
    spread = run_all(request(folder, checkpoint, tmp_path / "dask", workers=2))
    started, summary = spread[0], spread[-1]
    assert started.mode == "dask LocalCluster of 2 worker process(es)"
    assert sorted(summary.done) == single[-1].done and not summary.failed
    assert_same_outputs(single[0].run_dir, started.run_dir, atol=1e-5)
    pooled = [float(read_csv(r[0].run_dir / "metrics.csv")[-1]["iou_foreground"]) for r in (single, spread)]
    assert pooled[0] == pytest.approx(pooled[1], abs=1e-6)


def test_dask_scheduler_address_and_the_blocks_of_one_big_image(folder, checkpoint, tmp_path, cluster):
    """A scheduler address given by the user; a big image split into blocks over the workers equals the same
    blocks predicted in this process, and stays close to the whole-image prediction."""
    data = tmp_path / "big"
    raw, label = crop("test", "A9_A9_p5d.tif", 0, 0, 450, 450)
    write_image(data / "raw" / "big.tif", raw)
    write_image(data / "labels" / "big.tif", label)
    common = {
        "checkpoint": checkpoint,
        "input_dir": data / "raw",
        "labels_dir": data / "labels",
        "device": "cpu",
        "block_size": 128,
        "halo": 32,
    }
    here = run_all(BatchRequest(output_dir=tmp_path / "here", **common))
    spread = run_all(BatchRequest(output_dir=tmp_path / "dask", scheduler=cluster.scheduler_address, **common))
    assert spread[0].mode == f"dask scheduler {cluster.scheduler_address} (2 worker(s))"
    progress = of(spread, FileProgress)
    assert [p.total for p in progress] == [16] * 16 and sorted(p.done for p in progress) == list(range(1, 17))
    assert isinstance(of(spread, FileStarted)[0].live, da.Array) and of(spread, FileStarted)[0].tiles == 16
    assert_same_outputs(here[0].run_dir, spread[0].run_dir, ["big"], atol=1e-5)

    # against the whole image: the U-Net's instance norm makes any tiling change the prediction a little; the
    # blocks (192 px with their halo) change it no more than plain tiles of that size do
    def whole(tile=None):
        sets = [f"predict.tile_size=[{tile}, {tile}]"] if tile else []
        reports = run_all(
            BatchRequest(
                checkpoint=checkpoint,
                input_dir=data / "raw",
                output_dir=tmp_path / "whole",
                device="cpu",
                overrides=sets,
            )
        )
        return tifffile.imread(reports[0].run_dir / "per_image" / "big.tif")

    blocks, full, tiled = tifffile.imread(here[0].run_dir / "per_image" / "big.tif"), whole(), whole(192)
    block_change, tile_change = np.abs(blocks - full).mean(), np.abs(tiled - full).mean()
    assert 0 < block_change <= 1.25 * tile_change, (block_change, tile_change)
    assert not (spread[0].run_dir / ".blocks").exists() and (spread[0].run_dir / "metrics.csv").is_file()


def test_dask_cancel_stops_every_worker_and_a_resume_finishes(folder, checkpoint, tmp_path, cluster):
    times = {}

    def cancel_at_first_tile(run, report):
        if isinstance(report, FileProgress) and not run.cancelled:
            times["cancel"] = time.perf_counter()
            run.cancel()
        if isinstance(report, BatchSummary):
            times["summary"] = time.perf_counter()

    settings = ["predict.tile_size=[32, 32]", "predict.batch_size=1"]
    reports = run_all(
        request(folder, checkpoint, tmp_path, scheduler=cluster.scheduler_address, overrides=settings),
        cancel_at_first_tile,
    )
    summary = reports[-1]
    assert summary.cancelled and len(summary.done) < 4 and summary.not_run and not summary.failed
    assert times["summary"] - times["cancel"] < 10  # every worker stopped after its tile (polled every 0.3 s)
    started = time.perf_counter()
    resumed = run_all(BatchRequest(resume=summary.run_dir, device="cpu", scheduler=cluster.scheduler_address))
    assert sorted(resumed[-1].done + resumed[-1].finished_earlier) == resumed[0].names and not resumed[-1].cancelled
    assert time.perf_counter() - started < 120


# --------------------------------------------------------------------------------------------------
# The command line


def test_a_plain_rerun_of_an_unfinished_run_says_how_to_resume_it(folder, checkpoint, tmp_path, capsys):
    def cancel_after_first(run, report):
        if isinstance(report, FileDone):
            run.cancel()

    first = run_all(request(folder, checkpoint, tmp_path), cancel_after_first)[-1].run_dir
    snapshot = tree(first)
    args = [
        "batch",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(folder["raw"]),
        "--labels",
        str(folder["labels"]),
        "--output",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        f"note: the earlier run {first} of this checkpoint and folder is unfinished (1 of 4 files); resume it to "
        f"predict only the rest: napari-bioflow batch --resume {first}"
    ) in out
    assert f"run {tmp_path / 'batch' / 'results' / 'batch_2'}" in out  # a new run all the same
    assert tree(first) == snapshot  # the earlier run untouched
    # other settings are another run: no note
    assert main([*args, "--set", "predict.tta=true"]) == 0
    assert "note: the earlier run" not in capsys.readouterr().out


def test_cli_batch_runs_resumes_and_reports(folder, checkpoint, tmp_path, capsys):
    args = [
        "batch",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(folder["raw"]),
        "--labels",
        str(folder["labels"]),
        "--output",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "batch" / "results" / "batch_1"
    assert f"run {run_dir}" in out and "[4/4] a_tiff.tif" not in out and "[1/4] a_tiff.tif" in out
    assert "Batch done: 4 predicted" in out and f"metrics: {run_dir / 'metrics.csv'}" in out
    assert main(["batch", "--resume", str(run_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "4 finished earlier" in out and "0 predicted" in out


def test_cli_batch_on_a_dask_scheduler(folder, checkpoint, tmp_path, capsys, cluster):
    args = [
        "batch",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(folder["raw"]),
        "--output",
        str(tmp_path),
        "--scheduler",
        cluster.scheduler_address,
        "--device",
        "auto",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"(dask scheduler {cluster.scheduler_address} (2 worker(s))): 4 image(s) to predict" in out
    assert "Batch done: 4 predicted" in out and "files/s" in out
    assert len(list((tmp_path / "batch" / "results" / "batch_1" / "batch" / "done").glob("*.json"))) == 4


def test_cli_batch_bad_input_is_exit_2_and_one_line(folder, checkpoint, tmp_path, capsys):
    cases = [
        (["--checkpoint", str(checkpoint), "--input", str(tmp_path / "none")], str(tmp_path / "none")),
        (["--checkpoint", str(tmp_path / "no.pth"), "--input", str(folder["raw"])], "no.pth"),
        (["--resume", str(tmp_path)], "is not a batch run folder"),
        (
            [
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(folder["raw"]),
                "--workers",
                "2",
                "--scheduler",
                "tcp://x:1",
            ],
            "not both",
        ),
        (
            ["--checkpoint", str(checkpoint), "--input", str(folder["raw"]), "--scheduler", "tcp://127.0.0.1:9"],
            "Cannot reach the dask scheduler at tcp://127.0.0.1:9",
        ),
    ]
    for extra, expected in cases:
        assert main(["batch", *extra, "--output", str(tmp_path / "out"), "--device", "cpu"]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("napari-bioflow: error: ") and expected in err, (extra, err)
