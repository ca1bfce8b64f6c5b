"""Build the small real classification sets of tests/data from ../shared/data (run once; the output is committed).

Labels are the imaging modality of each source, which is true by construction:
  2D (48x48 nominal, sizes 36..64 so that resize/pad matter), grayscale uint8 PNG, 4 classes:
    fluorescence_nuclei (BBBC007), he_histology (H&E skin, luminance), cryo_et (tomogram slices), timelapse (CTC frames)
  3D (16x32x32) uint8 TIFF, 2 classes: fluorescence_nuclei (cells3d nuclei), cryo_et (tomogram)
Training and test crops come from disjoint parts of every source (other images, frames, slices or columns).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile
from skimage.io import imsave

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parents[1] / "tests" / "data"
rng = np.random.default_rng(7)


def to_uint8(a, lo=None, hi=None):
    a = a.astype(np.float32)
    lo = np.percentile(a, 0.5) if lo is None else lo
    hi = np.percentile(a, 99.5) if hi is None else hi
    return np.clip((a - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)


def crops2d(planes, n):
    """n crops of random size from a list of 2D planes."""
    out = []
    for _ in range(n):
        img = planes[rng.integers(len(planes))]
        h = w = int(rng.integers(36, 65))
        y, x = rng.integers(0, img.shape[0] - h + 1), rng.integers(0, img.shape[1] - w + 1)
        out.append(img[y : y + h, x : x + w])
    return out


def sources_2d():
    bbbc = sorted((SHARED / "bbbc007_2d" / "images").glob("*.tif"))
    nuclei = [tifffile.imread(p) for p in bbbc]
    skin = tifffile.imread(SHARED / "skin_he" / "skin.tif").astype(np.float32)
    gray = (skin @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    tomo = tifffile.imread(SHARED / "tomo_3d" / "tomo.tif")
    lo, hi = np.percentile(tomo, [0.5, 99.5])
    tl = tifffile.imread(SHARED / "timelapse_2d" / "2D_timelapse.tif")
    return {  # (training planes, test planes): disjoint parts
        "fluorescence_nuclei": (nuclei[:10], nuclei[10:]),
        "he_histology": ([gray[:, :800]], [gray[:, 880:]]),
        "cryo_et": (
            [to_uint8(tomo[z], lo, hi) for z in range(10, 65)],
            [to_uint8(tomo[z], lo, hi) for z in range(75, 95)],
        ),
        "timelapse": (list(tl[:20]), list(tl[22:])),
    }


def sources_3d():
    nuc = tifffile.imread(SHARED / "nuclei_3d" / "nuclei.tif")
    tomo = tifffile.imread(SHARED / "tomo_3d" / "tomo.tif")
    nuc8, tomo8 = to_uint8(nuc), to_uint8(tomo)
    return {"fluorescence_nuclei": (nuc8[:, :160], nuc8[:, 192:]), "cryo_et": (tomo8[:60], tomo8[70:])}


def crops3d(vol, n, size=(16, 32, 32)):
    out = []
    for _ in range(n):
        s = [int(rng.integers(0, d - p + 1)) for d, p in zip(vol.shape, size)]
        out.append(vol[s[0] : s[0] + size[0], s[1] : s[1] + size[1], s[2] : s[2] + size[2]])
    return out


def main():
    root = OUT / "classification_2d"
    for cls, (train, test) in sources_2d().items():
        for split, planes, n in (("train", train, 30), ("test", test, 10)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i, c in enumerate(crops2d(planes, n)):
                imsave(folder / f"{cls}_{i:03d}.png", np.ascontiguousarray(c), check_contrast=False)
    root = OUT / "classification_3d"
    for cls, (train, test) in sources_3d().items():
        for split, vol, n in (("train", train, 12), ("test", test, 4)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i, c in enumerate(crops3d(vol, n)):
                tifffile.imwrite(folder / f"{cls}_{i:03d}.tif", np.ascontiguousarray(c))
    print("written under", OUT)


if __name__ == "__main__":
    sys.exit(main())
