"""Classification inputs (issue 12 item 8): `napari-bioflow class-folders CSV --images DIR -o OUT` turns a CSV of
(file, class) into class sub-folders (copies or hard links, the user's files untouched, nothing overwritten, one
sentence for unknown files and duplicates), the tree trains a classifier; test images without classes are accepted in
any folder layout (flat, nested) and predicted, a half-named layout is refused. Real crops of tests/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import read_csv, tree

from napari_bioflow.cli import main

DATA = Path(__file__).parents[1] / "data" / "classification_2d"
CLASSES = ["cryo_et", "fluorescence_nuclei", "he_histology", "timelapse"]


@pytest.fixture()
def flat(tmp_path) -> tuple[Path, Path]:
    """6 real training crops of each class copied into one flat folder (some in a sub-folder) and their CSV."""
    images = tmp_path / "images"
    (images / "batch2").mkdir(parents=True)
    rows = ["filename,label"]
    for cls in CLASSES:
        for k, src in enumerate(sorted((DATA / "train" / cls).glob("*.png"))[:6]):
            name = f"batch2/{src.name}" if k >= 4 else src.name
            shutil.copy(src, images / name)
            rows.append(f"{name},{cls}")
    (tmp_path / "classes.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "classes.csv", images


def test_csv_to_class_folders_then_train_and_predict(tmp_path, flat, capsys):
    csv_path, images = flat
    before = tree(images)
    out = tmp_path / "tree"
    assert main(["class-folders", str(csv_path), "--images", str(images), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"copied 24 images into 4 class folders under {out}: cryo_et 6, fluorescence_nuclei 6" in printed
    assert tree(images) == before  # the user's files: all there, unchanged
    assert sorted(p.name for p in out.iterdir()) == CLASSES
    for cls in CLASSES:
        files = sorted(p.name for p in (out / cls).iterdir())
        assert files == sorted(p.name for p in sorted((DATA / "train" / cls).glob("*.png"))[:6])
        assert (out / cls / files[0]).read_bytes() == (DATA / "train" / cls / files[0]).read_bytes()
    # nothing is overwritten: the same command again is refused, and the tree is unchanged
    made = tree(out)
    assert main(["class-folders", str(csv_path), "--images", str(images), "-o", str(out)]) == 2
    assert "The output folder" in capsys.readouterr().err and tree(out) == made

    # the tree trains a classifier; test images without classes in nested folders are predicted
    test = tmp_path / "unsorted"
    for k, cls in enumerate(CLASSES):
        for j, src in enumerate(sorted((DATA / "test" / cls).glob("*.png"))[:2]):
            target = test / f"plate{k % 2}" / (f"well{j}" if j else "") / f"img{k}.png"  # names repeat across folders
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target)
    code = main(
        [
            "init",
            "classification",
            "-o",
            str(tmp_path / "cls.yaml"),
        ]
    )
    assert code == 0
    sets = [
        f"data.train_raw={out}",
        f"data.test_raw={test}",
        f"output_dir={tmp_path / 'runs'}",
        "name=csv",
        "model.name=simple_cnn",
        "data.patch_size=[32, 32]",
        "data.val_split=0.25",
        "train.epochs=1",
        "train.batch_size=8",
        "device=cpu",
    ]
    args = ["train", str(tmp_path / "cls.yaml")] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0, capsys.readouterr().err
    (predictions,) = list((tmp_path / "runs").rglob("predictions.csv"))
    rows = read_csv(predictions)
    names = sorted(r[next(iter(r))] for r in rows)
    assert len(rows) == 8 and len(set(names)) == 8  # nested images with repeated names stay apart
    assert "plate0/img0.png" in names and "plate0/well1/img0.png" in names
    assert {r["class"] for r in rows} <= set(CLASSES)
    assert not (predictions.parent / "confusion_matrix.csv").exists()  # no classes, no metrics


def test_hard_links_and_the_refusals(tmp_path, flat, capsys):
    csv_path, images = flat
    out = tmp_path / "linked"
    assert main(["class-folders", str(csv_path), "--images", str(images), "-o", str(out), "--link"]) == 0
    linked = out / "cryo_et" / sorted((DATA / "train" / "cryo_et").glob("*.png"))[0].name
    assert linked.stat().st_nlink == 2  # the same file, not a copy
    capsys.readouterr()

    def refused(text: str, words: str) -> None:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        target = tmp_path / "never"
        assert main(["class-folders", str(bad), "--images", str(images), "-o", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, err
        assert not target.exists() and not (tmp_path / "never.part").exists()

    first = sorted(images.glob("*.png"))[0].name
    refused(f"{first},a\nmissing_1.png,b\n", "1 file(s) listed in")
    refused(f"{first},a\n{first},b\n", f"{first} is listed twice in")
    refused(f"{first},a\n{first}\n", "has rows without a file and a class (line 2)")
    refused(f"{first},../up\n", "cannot be a folder name")
    shutil.copy(images / first, images / "batch2" / first)
    refused(f"{first},a\nbatch2/{first},a\n", f"Two files named {first} are of class a")


def test_half_class_named_test_folder_is_refused(tmp_path, capsys):
    """Sub-folders partly named after classes are a misspelt class, not 'no classes': one sentence."""
    from napari_bioflow.engine.errors import InputError
    from napari_bioflow.engine.predict.classification_results import class_test_items

    test = tmp_path / "test"
    for cls in ("cryo_et", "cryo-et"):
        (test / cls).mkdir(parents=True)
        shutil.copy(next((DATA / "test" / "cryo_et").glob("*.png")), test / cls / "a.png")
    with pytest.raises(
        InputError, match=r"sub-folder .*cryo-et is not one of the model's classes \(cryo_et, .*\), but cryo_et is"
    ):
        class_test_items(test, CLASSES)
    shutil.rmtree(test / "cryo_et")  # no sub-folder is a class: predictions only, any layout
    assert class_test_items(test, CLASSES) == [(test / "cryo-et" / "a.png", None)]
    labelled = class_test_items(DATA / "test", CLASSES)
    assert len(labelled) == 40 and {c for _, c in labelled} == {0, 1, 2, 3}
