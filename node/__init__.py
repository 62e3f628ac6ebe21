"""segnode: a DICOM node that turns NIfTI segmentations into pixel-aligned DICOM SEG."""

__version__ = "0.1.0"
