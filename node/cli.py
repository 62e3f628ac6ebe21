"""The `segnode` command line. No domain logic here: parse, call, report one line on failure."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import node
from node import logs
from node.config import DEFAULT_CONFIG, Config, check_tls_files, load_config
from node.config.effective import effective_toml
from node.convert import build_seg_from_input, error_line, write_dataset_atomically
from node.convert.seg import AlgorithmInfo, SegOptions, SegType
from node.convert.series import choose_stack, find_stacks
from node.destinations import create
from node.diskspace import DiskGuard
from node.errors import ConfigError, SegnodeError
from node.pipeline.match import pick_stack
from node.state import State, open_state
from node.state.model import JobState

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
    convert.add_argument(
        "--type",
        choices=[t.value for t in SegType],
        default=SegType.BINARY.value,
        help="SEG type (default binary: displayed by most viewers and PACS)",
    )
    convert.add_argument("--series", help="SeriesInstanceUID to use when the folder holds several series")
    convert.add_argument(
        "--stack",
        type=int,
        help="stack of the series to use (1: the main one) when it holds several"
        " (echoes, phases, planes); by default the one the NIfTI's grid fits",
    )
    defaults = SegOptions()
    convert.add_argument(
        "--algorithm-name", default=defaults.algorithm.name, help="algorithm name written into each segment"
    )
    convert.add_argument("--algorithm-version", default=defaults.algorithm.version, help="algorithm version")
    convert.add_argument("--series-description", default=defaults.series_description)
    convert.add_argument(
        "--qc",
        type=Path,
        metavar="FILE.png",
        help="also write a QC picture of the SEG as written (and FILE.json beside it with per-segment figures)",
    )
    convert.set_defaults(handler=_convert)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--config", type=Path, default=DEFAULT_CONFIG, help=f"node config (TOML; default {DEFAULT_CONFIG})"
        )
        return sub

    with_config("run", "run the node in the foreground (as systemd does)").set_defaults(handler=_run)
    with_config("check-config", "validate a config file and exit").set_defaults(handler=_check_config)
    with_config("status", "series and jobs by state, disk space").set_defaults(handler=_status)
    listing = with_config("jobs", "list recent jobs")
    listing.add_argument("--state", choices=[s.value for s in JobState], help="only jobs in this state")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(handler=_jobs)
    retry = with_config("retry", "send a failed job again")
    retry.add_argument("job", type=int, help="job number (see `segnode jobs`)")
    retry.set_defaults(handler=_retry)
    ping = with_config("echo", "check a configured destination (C-ECHO a DICOM one)")
    ping.add_argument("destination", nargs="?", help="destination name (default: every DICOM destination)")
    ping.set_defaults(handler=_echo)
    service = commands.add_parser("install-service", help="install the systemd unit, its user and its folders")
    service.add_argument(
        "--config", type=Path, help="config to install if /etc/segnode/segnode.toml is absent (default: the checkout's)"
    )
    service.add_argument("--root", type=Path, default=Path("/"), help="install into this staging root (default /)")
    service.add_argument("--dry-run", action="store_true", help="print what would be done, do nothing")
    service.set_defaults(handler=_install_service)
    demo = commands.add_parser("demo", help="see segnode work without a PACS: a phantom CT in, a SEG out")
    demo.add_argument(
        "--output", type=Path, default=Path("segnode-demo"), help="folder the SEG ends in (default ./segnode-demo)"
    )
    demo.add_argument(
        "--exit-when-done",
        "--no-wait",
        dest="exit_when_done",
        action="store_true",
        help="exit once the SEG is ready instead of running until Ctrl-C",
    )
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the SEG (default 120)")
    demo.add_argument("--port", type=int, default=0, help="DICOM port (default: a free one)")
    demo.add_argument("--http-port", type=int, default=0, help="HTTP port of the status page (default: a free one)")
    demo.set_defaults(handler=_demo)
    return parser


def _convert(args: argparse.Namespace) -> int:
    stacks = find_stacks(args.dicom, args.series)
    series = (
        choose_stack(stacks, args.stack, str(args.dicom)) if args.stack is not None else pick_stack(stacks, args.nifti)
    )
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
    if args.qc is not None:
        from node.convert.qc_files import draw_written_seg, save_picture  # Pillow only when a picture is asked for

        seg, picture = draw_written_seg(args.out, result.series)
        figures = args.qc.with_suffix(".json")
        save_picture(seg, picture, args.qc, figures)
        print(f"{args.qc}: QC picture; {figures}: per-segment figures")
    return 0


def _run(args: argparse.Namespace) -> int:
    from node.service.node import Node  # the service pulls in the network stack; convert does not need it

    config = load_config(args.config)
    check_tls_files(config)  # a certificate that does not load is one line here, not a failed start later
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else config.node.log_level)
    Node(config).run()
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    check_tls_files(config)
    destinations = ", ".join(d.describe() for d in config.destinations) or "none"
    # The verdict is a TOML comment, so that stdout stays a file `segnode run --config` accepts as it is.
    print(
        f"# {args.config}: ok; {config.node.ae_title} on {config.node.bind}:{config.node.port},"
        f" data {config.paths.data}, destinations: {destinations}\n"
        "# The effective configuration: every key with the value the node uses, defaults included."
    )
    print(effective_toml(config), end="")
    return 0


def _open_state(config: Config) -> State:
    if not config.paths.database.exists():
        raise ConfigError(f"{config.paths.database}: no state database yet; has `segnode run` been started?")
    return open_state(config.paths.data, config.paths.database)


def _status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _open_state(config) as state:
        series = state.series.counts()
        job_counts = state.jobs.counts()
    free = DiskGuard.from_config(config).check().free_bytes  # also where the data folder is not made yet
    print("series: " + ", ".join(f"{state.value} {n}" for state, n in series.items()))
    print("jobs:   " + ", ".join(f"{state.value} {n}" for state, n in job_counts.items()))
    print(f"disk:   {free / 2**30:.1f} GiB free in {config.paths.data}")
    return 0


def _jobs(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with _open_state(config) as state:
        rows = state.jobs.list_jobs(args.state, args.limit)
    for job in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.updated_at))
        sends = " ".join(f"{s.destination}:{s.state.value}" for s in job.sends)
        reason = f"  {job.reason}" if job.reason else ""
        print(f"{job.id:>6} {when} {job.state.value:<10} {job.inbox_path.name} {sends}{reason}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    from node.service.node import Node

    config = load_config(args.config)
    _open_state(config).close()
    print(Node(config).requeue(args.job))
    return 0


def _echo(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    chosen = [config.destination(args.destination)] if args.destination else list(config.destinations)
    if not chosen:
        raise ConfigError(f"{args.config}: no destination to check")
    failures = 0
    for block in chosen:
        # C-ECHO for a DICOM destination, a writable folder for a folder one: each kind's own check().
        problem = create(block, calling_ae=config.node.ae_title, timeout=config.send.timeout, tls=config.tls).check()
        print(f"{block.describe()}: {problem or 'ok'}")
        failures += problem is not None
    return 1 if failures else 0


def _demo(args: argparse.Namespace) -> int:
    from node.service.demo import DemoOptions, run_demo

    options = DemoOptions(
        output=args.output,
        exit_when_done=args.exit_when_done,
        timeout=args.timeout,
        port=args.port,
        http_port=args.http_port,
        verbose=args.verbose,
    )
    return run_demo(options)


def _install_service(args: argparse.Namespace) -> int:
    from node.service.install import install

    install(root=args.root, source_config=args.config, dry_run=args.dry_run)
    return 0


def configure_logging(args: argparse.Namespace) -> None:
    level = "DEBUG" if args.verbose else ("INFO" if args.command == "run" else "WARNING")
    settings = None
    if args.command == "run":
        # The node's lines take [logging]'s shape from the first; a config that cannot be read is reported by
        # `run` itself, in one line, once logging is set up.
        try:
            settings = load_config(args.config).logging
        except (SegnodeError, OSError):
            settings = None
    logs.configure(level, settings=settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args)
    with warnings.catch_warnings():
        if not args.verbose:
            # Library warnings (pydicom on odd values, numpy on absurd positions) are about input segnode handles
            # and reports in its own words: they are never extra lines on the user's terminal.
            warnings.simplefilter("ignore")
        return _handle(args)


def _handle(args: argparse.Namespace) -> int:
    try:
        return int(args.handler(args))
    except SegnodeError as exc:
        print(f"segnode {args.command}: {error_line(exc)}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as exc:
        print(f"segnode {args.command}: {error_line(exc)}", file=sys.stderr)
        return 3
    except Exception as exc:  # the one-line contract holds even for a bug; -v logs the traceback
        log.debug("unexpected error", exc_info=True)
        print(f"segnode {args.command}: unexpected error, please report it: {error_line(exc)}", file=sys.stderr)
        return 4
