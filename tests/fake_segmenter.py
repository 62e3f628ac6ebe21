"""A stand-in segmentation tool for the export-command test: thresholds the phantom's organs (HU bands) and
writes one mask per organ, TotalSegmentator-style, into ``<inbox>/<series_uid>/`` (built hidden, then renamed).

Usage: python fake_segmenter.py NIFTI INBOX SERIES_UID
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nibabel
import numpy as np

# nibabel's annotations are partial: used as a dynamic module, as in tests/synthetic.py.
nib: Any = nibabel

# tests/synthetic.py paints organ k at 40 + 60·k HU (± a 7 HU gradient), body at 40 HU.
ORGANS = {1: "liver", 2: "spleen", 3: "kidney_left", 4: "aorta"}


def main(nifti: str, inbox: str, series_uid: str) -> None:
    image = nib.load(nifti)
    hu = np.asanyarray(image.dataobj).astype(np.float64)
    labels = np.where(hu > 70, np.rint((hu - 40) / 60), 0).astype(np.uint8)
    building = Path(inbox) / f".{series_uid}.building"
    building.mkdir()
    for value, name in ORGANS.items():
        mask = nib.Nifti1Image((labels == value).astype(np.uint8), image.affine, image.header)
        mask.set_data_dtype(np.uint8)
        nib.save(mask, building / f"{name}.nii.gz")
    building.rename(Path(inbox) / series_uid)
    print(f"segmented {series_uid}: {len(ORGANS)} masks")


if __name__ == "__main__":
    main(*sys.argv[1:4])
