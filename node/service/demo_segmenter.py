"""The demo's stand-in segmentation tool: HU thresholds turn a CT NIfTI into a label map.

Usage: ``python -m node.service.demo_segmenter NIFTI OUT``. ``segnode demo`` runs it as the export command hook, with
OUT ``{inbox}/{series_uid}.nii.gz``, so the node matches the result to its series by name. It writes what a careful
tool writes: the label table sidecar ``<stem>.json`` (names and colours) first, then the label map, each under a
``.tmp`` name that the inbox ignores, renamed when complete. Only nibabel and numpy: it stands for any tool.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import numpy.typing as npt

# nibabel's annotations are partial; used as a dynamic module, as the tests do.
nib: Any = nibabel


@dataclass(frozen=True)
class Band:
    """Voxels with ``low <= HU < high`` get ``label``."""

    label: int
    name: str
    low: float
    high: float
    colour: tuple[int, int, int]


#: Contrast-enhanced liver, arterial blood, bone: bands that soft tissue (about 40 HU) never reaches.
BANDS: tuple[Band, ...] = (
    Band(1, "liver", 80.0, 180.0, (221, 130, 101)),
    Band(2, "aorta", 180.0, 450.0, (224, 97, 76)),
    Band(3, "vertebrae_lumbar", 450.0, 3000.0, (241, 214, 145)),
)


def segment(hu: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """The label map of a volume in HU (any shape)."""
    labels = np.zeros(hu.shape, dtype=np.uint8)
    for band in BANDS:
        labels[(hu >= band.low) & (hu < band.high)] = band.label
    return labels


def label_table() -> dict[str, Any]:
    """The sidecar the node reads (node.convert.label_tables): names and colours by label value."""
    return {"labels": {str(b.label): {"name": b.name, "color": list(b.colour)} for b in BANDS}}


def sidecar_path(out: Path) -> Path:
    """``x.nii.gz`` and ``x.nii`` -> ``x.json``, the name the inbox pairs with the label map."""
    stem = out.name.removesuffix(".gz").removesuffix(".nii")
    return out.with_name(stem + ".json")


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    # The inbox ignores *.tmp, so the node never takes a half-written file; the rename makes it appear whole.
    partial = path.with_name(path.name + ".tmp")
    write(partial)
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    partial.replace(path)


def run(nifti: Path, out: Path) -> dict[str, int]:
    """Segment ``nifti`` into ``out`` (with its sidecar); the voxel count of each label name."""
    image = nib.load(nifti)
    labels = segment(np.asanyarray(image.dataobj))
    result = nib.Nifti1Image(labels, image.affine)
    result.set_data_dtype(np.uint8)
    # Both forms from the input, so the label map's grid is exactly the export's and matches without resampling.
    result.header.set_sform(image.header.get_sform(), code=int(image.header["sform_code"]))
    result.header.set_qform(image.header.get_qform(), code=int(image.header["qform_code"]))
    payload = result.to_bytes()
    if out.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1)
    table = json.dumps(label_table(), indent=2) + "\n"
    # The sidecar first: once the label map appears, its table is already beside it.
    _write_atomically(sidecar_path(out), lambda p: p.write_text(table, encoding="utf-8"))
    _write_atomically(out, lambda p: p.write_bytes(payload))
    return {band.name: int(np.count_nonzero(labels == band.label)) for band in BANDS}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m node.service.demo_segmenter NIFTI OUT", file=sys.stderr)
        return 2
    try:
        counts = run(Path(args[0]), Path(args[1]))
    except (OSError, ValueError) as exc:  # nibabel raises ValueError subclasses for files it cannot read
        print(f"demo_segmenter: {args[0]}: {exc}", file=sys.stderr)
        return 1
    print("demo_segmenter: " + ", ".join(f"{name} {count} voxels" for name, count in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
