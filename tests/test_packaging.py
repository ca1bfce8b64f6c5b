"""The package installs as a napari plugin: manifest found by npe2, data shipped, imports stay light."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_manifest_is_the_packaged_one():
    assert (ROOT / "napari.yaml").read_text() == (ROOT / "src/napari_bioflow/napari.yaml").read_text()


def test_npe2_validates_and_lists_widgets_and_samples():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-bioflow"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-bioflow")
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "bioflow",  # the tabbed dock: Train | Predict | Batch | Runs | Export
        "Train",
        "Predict",
        "Batch",
        "Runs",
        "Export model (BioImage Model Zoo)",
    }
    assert {s.key for s in manifest.contributions.sample_data} == {"bbbc007_nuclei", "nuclei_3d"}


def test_widget_and_sample_commands_resolve():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    for cmd in pm.get_manifest("napari-bioflow").contributions.commands:
        module, attr = cmd.python_name.split(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr)), cmd.python_name


def test_sample_data_layers():
    from napari_bioflow.sample_data import bbbc007_nuclei, nuclei_3d

    (raw, _, kind_raw), (mask, _, kind_mask) = bbbc007_nuclei()
    assert (kind_raw, kind_mask) == ("image", "labels")
    assert raw.shape == mask.shape == (450, 450) and set(map(int, set(mask.ravel()))) == {0, 1}
    (raw3, _, _), (mask3, _, _) = nuclei_3d()
    assert raw3.ndim == 3 and raw3.shape == mask3.shape and mask3.max() == 1


def test_import_loads_no_torch_or_qt():
    code = (
        "import sys, napari_bioflow, napari_bioflow.cli, napari_bioflow.config; "
        "bad = [m for m in ('torch', 'napari', 'qtpy', 'PyQt5') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_wheel_ships_manifest_and_sample_data(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("napari_bioflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_bioflow/napari.yaml" in names
    assert any(n.startswith("napari_bioflow/sample_data/bbbc007_2d/train/raw/") for n in names)
    assert any(n.startswith("napari_bioflow/sample_data/nuclei_3d/test/label/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "napari-bioflow = napari_bioflow:napari.yaml" in text and "napari_bioflow.cli:main" in text


def test_a_regular_install_of_the_wheel_is_found_by_npe2(tmp_path):
    """A regular (not editable) install: the wheel unpacked into a folder, imported from there, its manifest found
    and valid. The environment's packages are on the path without its .pth files, so the editable install of this
    checkout is not imported."""
    import sysconfig

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("napari_bioflow-*.whl")
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # what pip does with a pure-Python wheel, scripts aside
    code = f"""
import sys
sys.path[:] = [{str(target)!r}, *{[p for p in sys.path if p and "site-packages" not in p]!r}, {sysconfig.get_paths()["purelib"]!r}]
from npe2 import PluginManager, PluginManifest
import napari_bioflow
assert napari_bioflow.__file__.startswith({str(target)!r}), napari_bioflow.__file__
manifest = PluginManifest.from_distribution("napari-bioflow")
pm = PluginManager()
pm.discover()
widgets = sorted(w.display_name for w in pm.get_manifest("napari-bioflow").contributions.widgets)
print(manifest.name, widgets)
"""
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == (
        "napari-bioflow ['Batch', 'Export model (BioImage Model Zoo)', 'Predict', 'Runs', 'Train', 'bioflow']"
    )
