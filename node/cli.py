"""The `segnode` command line. No domain logic here: parse, call, report one line on failure."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import node
from node.convert import build_seg_from_input, error_line, write_dataset_atomically
from node.errors import SegnodeError
from node.labels import AlgorithmInfo
from node.seg import SegOptions, SegType
from node.series import load_series

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segnode", description=node.__doc__)
    parser.add_argument("--version", action="version", version=f"segnode {node.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="NIfTI label map or mask folder + DICOM series -> DICOM SEG")
    convert.add_argument("--dicom", type=Path, required=True, help="folder holding the source series")
    convert.add_argument("--nifti", type=Path, required=True, help="label map (.nii/.nii.gz) or folder of masks")
    convert.add_argument("--out", type=Path, required=True, help="SEG file to write")
    convert.add_argument("--labels", type=Path, help="label table JSON (names/colours/codes, dcmqi JSON too)")
    convert.add_argument("--type", choices=[t.value for t in SegType], default=SegType.BINARY.value,
                         help="SEG type (default binary: displayed by most viewers and PACS)")
    convert.add_argument("--series", help="SeriesInstanceUID to use when the folder holds several series")
    convert.add_argument("--algorithm-name", default="segnode", help="algorithm name written into each segment")
    convert.add_argument("--algorithm-version", default=node.__version__, help="algorithm version")
    convert.add_argument("--series-description", default="segnode SEG")
    convert.set_defaults(handler=_convert)
    return parser


def _convert(args: argparse.Namespace) -> int:
    series = load_series(args.dicom, args.series)
    options = SegOptions(
        seg_type=SegType(args.type),
        algorithm=AlgorithmInfo(name=args.algorithm_name, version=args.algorithm_version),
        series_description=args.series_description,
    )
    result = build_seg_from_input(series, args.nifti, labels_file=args.labels, options=options)
    write_dataset_atomically(result.dataset, args.out)
    for notice in result.notices:
        print(f"notice: {notice}", file=sys.stderr)
    print(f"{args.out}: {len(result.segments)} segment(s), {result.alignment.describe()}")
    return 0


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.handler(args))
    except SegnodeError as exc:
        print(f"segnode {args.command}: {error_line(exc)}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as exc:
        print(f"segnode {args.command}: {error_line(exc)}", file=sys.stderr)
        return 3
