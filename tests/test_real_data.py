"""segnode on real scanner series (../shared/real-dicom): label maps on the grids users bring, SEGs checked in mm.

For every case of the corpus a ground truth is defined in LPS mm from the DICOM headers (tests/real_data.py, not
node/), written as a label map on the grid of dcm2niix, dicom2nifti and the node's own export, and turned into a
SEG with ``segnode convert`` and by the running node. Each outcome must be a SEG that is right in patient space
(exact grids pixel for pixel, resampled ones by Dice and centroid), or a refusal in one readable line.

Without the corpus every test here is skipped with a reason naming the missing folder (``-ra`` prints it);
``SEGNODE_REAL_DICOM`` points the tests at another copy.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import real_data as rd
import synthetic as syn
from dcmtk import free_port, storescu, storescu_config
from nodes import dicom_destination, folder_destination, start_node, wait_for, write_config
from orthanc import OrthancServer, orthanc_binary

CORPUS = rd.corpus_folder()
MISSING = rd.corpus_missing(CORPUS)
CASES: list[rd.Case] = [] if MISSING else rd.load_cases(CORPUS)

needs_dcm2niix = pytest.mark.skipif(not syn.have_tool("dcm2niix"), reason="dcm2niix not installed")
needs_dcmtk = pytest.mark.skipif(not syn.have_tool("storescu"), reason="DCMTK (storescu) not installed")
HAVE_DCIODVFY = syn.have_tool("dciodvfy")

#: Exact CT and MR cases dcmqi reads back as a second, independent SEG reader.
DCMQI_CASES = ("ct_philips_axial", "ct_ge_3slice_implicit", "mr_si_sag_hfs", "mr_toshiba_ax30", "mr_xa30_enh_t1")
#: Cases the running node gets end to end: CT, MR (prone), Enhanced, multi-stack (two kinds), uneven spacing with
#: tilt, the single-plane localizer and a feet-first MR.
NODE_CASES = (
    "ct_philips_axial_jpegll",
    "mr_si_sag_hfp",
    "mr_xa30_enh_t1",
    "mr_ph_dualecho",
    "mr_ge_localizer",
    "ct_ge_tilt_uneven",
    "ct_philips_localizer",
    "mr_ge_ffs_vol1",
    "mr_xa30_enh_2echo",
)
NODE_WAIT_S = 90.0
#: End-to-end cases whose main stack gets a one-segment label map (a known bug kind); the others get two.
ONE_LABEL = frozenset({"ct_philips_localizer", "mr_ge_ffs_vol1", "mr_xa30_enh_t1"})


def case_params(ids: Sequence[str] | None = None) -> list[Any]:
    """One param per case (or per named case); a single skipped param naming the folder when it is absent."""
    if MISSING:
        return [pytest.param(None, id="no-corpus", marks=pytest.mark.skip(reason=MISSING))]
    chosen = [c for c in CASES if ids is None or c.id in ids]
    return [pytest.param(c, id=c.id) for c in chosen]


class Corpus:
    """The cases unpacked once per session, with their planes, stacks and converter outputs cached."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[tuple[str, str], Any] = {}

    def _cached(self, case: rd.Case, what: str, make: Callable[[], Any]) -> Any:
        key = (case.id, what)
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def folder(self, case: rd.Case) -> Path:
        result: Path = self._cached(case, "folder", lambda: rd.unpack(case, self.root / "cases"))
        return result

    def source(self, case: rd.Case) -> rd.SourceFiles:
        result: rd.SourceFiles = self._cached(case, "source", lambda: rd.read_planes(self.folder(case)))
        return result

    def stacks(self, case: rd.Case) -> list[tuple[rd.Plane, ...]]:
        result: list[tuple[rd.Plane, ...]] = self._cached(
            case, "stacks", lambda: rd.split_stacks(self.source(case).planes)
        )
        return result

    def dcm2niix(self, case: rd.Case) -> rd.Conversion:
        result: rd.Conversion = self._cached(
            case, "dcm2niix", lambda: rd.run_dcm2niix(self.folder(case), self.root / "dcm2niix" / case.id)
        )
        return result

    def dicom2nifti(self, case: rd.Case) -> rd.Conversion:
        result: rd.Conversion = self._cached(
            case,
            "dicom2nifti",
            lambda: rd.run_dicom2nifti(self.folder(case), self.root / "dicom2nifti" / f"{case.id}.nii.gz"),
        )
        return result


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    if MISSING:
        pytest.skip(MISSING)
    return Corpus(tmp_path_factory.mktemp("real-dicom"))


# -- helpers --------------------------------------------------------------------------------------------------------


def stack_for(label_map: rd.LabelMap, stacks: Sequence[tuple[rd.Plane, ...]]) -> list[tuple[rd.Plane, ...]]:
    """The stacks whose every pixel centre is a voxel centre of the label map."""
    return [s for s in stacks if label_map.fits_exactly(s)]


def stack_holding(stacks: Sequence[tuple[rd.Plane, ...]], ids: set[rd.PlaneId]) -> tuple[rd.Plane, ...] | None:
    for stack in stacks:
        if {p.id for p in stack} == ids:
            return stack
    return None


def seg_sources(seg: Path) -> set[rd.PlaneId]:
    _, frames = rd.read_seg_frames(seg)
    return {f.source for f in frames}


def normalised(ids: set[rd.PlaneId], multiframe: bool) -> set[rd.PlaneId]:
    return {(uid, frame if multiframe else None) for uid, frame in ids}


def check_label_map_has(label_map: rd.LabelMap, truth: rd.GroundTruth) -> None:
    present = label_map.labels_present()
    assert present == truth.labels, f"{label_map.path.name}: label map holds {present}, not {truth.labels}"


def names_of_inputs(folder: Path, nifti: Path, case: rd.Case) -> list[str]:
    return [str(folder), folder.name, nifti.name, *case.series_uids]


def check_seg_outcome(
    seg: Path, stack: Sequence[rd.Plane], label_map: rd.LabelMap, truth: rd.GroundTruth, series_uid: str, what: str
) -> rd.SegReport:
    """Outcome (a): the SEG is right in patient space, names its source, and dciodvfy finds no error."""
    report = rd.check_seg(seg, stack, label_map, truth)
    problems = list(report.problems) + rd.check_seg_identity(seg, stack, series_uid)
    if HAVE_DCIODVFY:
        problems += [f"dciodvfy: {line}" for line in syn.run_dciodvfy(seg)]
    assert not problems, f"{what}: {report.summary()}:\n  " + "\n  ".join(problems)
    return report


class Outcomes:
    """Several inputs per test: every failure is collected, then reported together."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.seen: list[str] = []

    def run(self, what: str, check: Callable[..., str], *args: Any) -> None:
        try:
            self.seen.append(f"{what}: {check(*args)}")
        except AssertionError as exc:
            self.failures.append(f"{what}: {exc}")
            self.seen.append(f"{what}: FAILED")

    def assert_all(self) -> None:
        print("\n".join(self.seen))
        assert not self.failures, "\n".join(self.failures)


def convert_and_check(
    run: syn.ConvertRunner,
    case: rd.Case,
    corpus: Corpus,
    nifti: Path,
    out: Path,
    truth: rd.GroundTruth,
    *extra: str,
    stack: Sequence[rd.Plane] | None = None,
) -> str:
    """``segnode convert`` on a label map; asserts the outcome the case calls for and says which it was.

    Single-stack series: a SEG (exact or resampled). Multi-stack series: a SEG over the one stack the grid fits
    exactly (or over ``stack`` when ``--stack`` is given), else a one-line refusal listing the stacks. A mosaic:
    a one-line refusal naming the mosaic.
    """
    folder = corpus.folder(case)
    stacks = corpus.stacks(case)
    label_map = rd.LabelMap.load(nifti)
    result = run("--dicom", str(folder), "--nifti", str(nifti), "--out", str(out), *extra)
    names = names_of_inputs(folder, nifti, case)
    if case.mosaic:
        problems = rd.refusal_problems(result.code, result.stderr, names)
        if "mosaic" not in result.stderr.lower():
            problems.append(f"the refusal does not mention the mosaic: {result.stderr.strip()!r}")
        assert not problems, "; ".join(problems)
        return f"refused: {result.stderr.strip()}"
    fits = stack_for(label_map, stacks)
    target = stack
    if target is None:
        if len(stacks) == 1:
            target = stacks[0]
        elif len(fits) == 1:
            target = fits[0]
    if target is None:
        problems = rd.refusal_problems(result.code, result.stderr, names)
        if "stack" not in result.stderr.lower():
            problems.append(f"the refusal does not list the stacks: {result.stderr.strip()!r}")
        assert not problems, (
            f"expected a one-line refusal (grid fits {len(fits)} of {len(stacks)} stacks): " + "; ".join(problems)
        )
        return f"refused: {result.stderr.strip()}"
    assert result.code == 0, f"expected a SEG, got exit {result.code}: {result.stderr.strip()[-1500:]}"
    assert out.is_file(), f"exit 0 but no {out}"
    report = check_seg_outcome(out, target, label_map, truth, case.series_uids[0], out.name)
    return f"SEG, {report.summary()}"


# -- the corpus itself ----------------------------------------------------------------------------------------------


def test_corpus_is_located_outside_the_repository() -> None:
    """The corpus is found beside the repository (or by the override), never inside it."""
    if MISSING:
        pytest.skip(MISSING)
    assert rd.REPO_ROOT.resolve() not in CORPUS.resolve().parents
    assert CASES, f"{CORPUS}/cases.json lists no cases"
    for case in CASES:
        assert case.archive.is_file(), f"{case.archive} listed in cases.json is missing"


@pytest.mark.parametrize("case", case_params())
def test_headers_agree_with_cases_json(corpus: Corpus, case: rd.Case) -> None:
    """Our own reading of the headers finds the series, instance and frame counts and the kind cases.json states."""
    source = corpus.source(case)
    stacks = corpus.stacks(case)
    assert set(source.series_uids) == set(case.series_uids)
    assert len(source.image_files) == case.instances
    assert len(source.planes) == case.frames
    if case.kind == "one stack":
        assert len(stacks) == 1, [len(s) for s in stacks]
        steps = rd.slice_steps(stacks[0])
        assert (np.abs(steps) > 1e-3).all(), "positions repeat in a one-stack case"
    elif case.single_plane:
        assert len(source.planes) == 1
    elif case.mosaic:
        assert "MOSAIC" in source.planes[0].image_type
    else:
        assert len(stacks) > 1, "a several-stacks case splits into one stack by our own reading"


@needs_dcm2niix
@pytest.mark.parametrize("case", case_params(("mr_ge_ffs_vol1",)))
def test_checks_catch_a_seg_one_voxel_off(
    corpus: Corpus, case: rd.Case, segnode_convert: syn.ConvertRunner, tmp_path: Path
) -> None:
    """The SEG checks are not vacuous: a right SEG held against a label map shifted by one voxel, or against the
    wrong source stack positions, fails them."""
    (reference,) = corpus.dcm2niix(case).files
    (stack,) = corpus.stacks(case)
    truth = rd.ground_truth(stack, labels=2)
    labels = rd.write_label_map(reference, truth, tmp_path / "labels.nii.gz")
    seg = tmp_path / "seg.dcm"
    assert segnode_convert("--dicom", str(corpus.folder(case)), "--nifti", str(labels), "--out", str(seg)).code == 0
    label_map = rd.LabelMap.load(labels)
    assert not rd.check_seg(seg, stack, label_map, truth).problems
    shifted = rd.LabelMap(labels, np.roll(label_map.data, 1, axis=0), label_map.affine_ras)
    assert rd.check_seg(seg, stack, shifted, truth).problems
    moved = [dataclasses.replace(p, position=(p.position[0], p.position[1], p.position[2] + 0.01)) for p in stack]
    assert any("mm from its source plane" in line for line in rd.check_seg(seg, moved, label_map, truth).problems)


# -- segnode convert on the grids of the converters -----------------------------------------------------------------


@needs_dcm2niix
@pytest.mark.parametrize("case", case_params())
def test_convert_on_dcm2niix_grids(
    corpus: Corpus, case: rd.Case, segnode_convert: syn.ConvertRunner, tmp_path: Path
) -> None:
    """Each dcm2niix output (plain files with two labels; _Eq_/_Tilt_ resampled ones with one label)."""
    conversion = corpus.dcm2niix(case)
    assert conversion.files, f"dcm2niix converted nothing: {conversion.refusal}"
    stacks = corpus.stacks(case)
    outcomes = Outcomes()
    for index, reference in enumerate(conversion.files):
        resampled = rd.is_resampled_dcm2niix(reference)
        reference_map = rd.LabelMap.load(reference)
        fits = stack_for(reference_map, stacks)
        # A mosaic's one plane is the whole tiled image: only the ellipsoid at its centre is inside the volume.
        truth = rd.ground_truth(fits[0] if fits else stacks[0], labels=1 if resampled or case.mosaic else 2)
        labels = rd.write_label_map(reference, truth, tmp_path / "labels" / reference.name)
        check_label_map_has(rd.LabelMap.load(labels), truth)
        seg = tmp_path / f"seg_{index}.dcm"
        outcomes.run(reference.name, convert_and_check, segnode_convert, case, corpus, labels, seg, truth)
    outcomes.assert_all()


@pytest.mark.parametrize("case", case_params())
def test_convert_on_dicom2nifti_grid(
    corpus: Corpus, case: rd.Case, segnode_convert: syn.ConvertRunner, tmp_path: Path
) -> None:
    """dicom2nifti's grid (LAS, sform code 2, qform 0), one label; where dicom2nifti refuses, the skip says why."""
    conversion = corpus.dicom2nifti(case)
    if not conversion.files:
        pytest.skip(f"dicom2nifti refuses {case.id}: {conversion.refusal}")
    (reference,) = conversion.files
    stacks = corpus.stacks(case)
    fits = stack_for(rd.LabelMap.load(reference), stacks)
    truth = rd.ground_truth(fits[0] if fits else stacks[0], labels=1)
    labels = rd.write_label_map(reference, truth, tmp_path / "labels.nii.gz")
    check_label_map_has(rd.LabelMap.load(labels), truth)
    outcome = convert_and_check(segnode_convert, case, corpus, labels, tmp_path / "seg.dcm", truth)
    print(outcome)


# -- segnode convert on the node's own export grid ------------------------------------------------------------------


def node_stack_api() -> tuple[Any, Any, Any]:
    """The engine's stack API as the contract names it; the test fails (not skips) when it is not there."""
    from node.convert import series
    from node.pipeline import export

    missing = [
        name
        for name, module in (
            ("node.convert.series.find_stacks", series),
            ("node.convert.series.load_series", series),
            ("node.pipeline.export.export_series", export),
        )
        if not hasattr(module, name.rsplit(".", 1)[1])
    ]
    assert not missing, f"the stack API of the contract is missing: {missing}"
    return series.find_stacks, series.load_series, export.export_series


def node_stack_members(source: Any) -> set[rd.PlaneId]:
    """The planes a node stack (a SourceSeries) holds, as (SOP Instance UID, frame number or None)."""
    if source.frame_order is not None:
        (dataset,) = source.datasets
        return {(str(dataset.SOPInstanceUID), int(f) + 1) for f in source.frame_order}
    return {(str(ds.SOPInstanceUID), None) for ds in source.datasets}


def uneven(stack: Sequence[rd.Plane]) -> bool:
    steps = np.abs(rd.slice_steps(stack))
    return bool(steps.size) and float(steps.max() - steps.min()) > 1e-2 * float(steps.max())


@pytest.mark.parametrize("case", case_params())
def test_convert_on_node_export_grid(
    corpus: Corpus, case: rd.Case, segnode_convert: syn.ConvertRunner, tmp_path: Path
) -> None:
    """Every stack the engine finds is one of our own stacks; its export's label map gives a SEG over it alone."""
    find_stacks, load_series, export_series = node_stack_api()
    folder = corpus.folder(case)
    if case.mosaic:
        with pytest.raises(Exception) as refused:
            find_stacks(folder)
        assert "mosaic" in str(refused.value).lower(), str(refused.value)
        assert "\n" not in str(refused.value).strip()
        return
    mine = corpus.stacks(case)
    sources = find_stacks(folder)
    assert sorted(s.stack.index for s in sources) == list(range(1, len(sources) + 1))
    assert sorted(len(node_stack_members(s)) for s in sources) == sorted(len(s) for s in mine)
    assert len(node_stack_members(min(sources, key=lambda s: s.stack.index))) == len(mine[0]), (
        "stack 1 is not the largest stack"
    )
    uid = case.series_uids[0]
    outcomes = Outcomes()
    for source in sorted(sources, key=lambda s: s.stack.index):
        n = int(source.stack.index)
        stack = stack_holding(mine, node_stack_members(source))
        assert stack is not None, f"engine stack {n} ({len(node_stack_members(source))} planes) is none of ours"

        def check(n: int, stack: tuple[rd.Plane, ...]) -> str:
            exported = export_series(load_series(folder, stack=n), tmp_path / "export")
            stem = uid if n == 1 else f"{uid}_stack{n}"
            assert exported.nifti.name == f"{stem}.nii.gz", exported.nifti.name
            sidecar = json.loads(exported.sidecar.read_text())
            assert exported.sidecar.name == f"{stem}.json"
            assert sidecar["SeriesInstanceUID"] == uid
            assert sidecar["stack"]["index"] == n and sidecar["stack"]["count"] == len(sources), sidecar["stack"]
            assert sidecar["stack"]["planes"] == len(stack), sidecar["stack"]
            if len(sources) > 1:
                assert sidecar["stack"]["key"], "a stack of a multi-stack series says nothing of what sets it apart"
            if uneven(stack):
                assert "resampled" in sidecar, "uneven stack exported without a 'resampled' record"
            truth = rd.ground_truth(stack, labels=2 if n == 1 else 1)
            labels = rd.write_label_map(exported.nifti, truth, tmp_path / "labels" / exported.nifti.name)
            check_label_map_has(rd.LabelMap.load(labels), truth)
            extra = ("--stack", str(n)) if len(sources) > 1 else ()
            return convert_and_check(
                segnode_convert, case, corpus, labels, tmp_path / f"seg_{n}.dcm", truth, *extra, stack=stack
            )

        outcomes.run(f"stack {n}", check, n, stack)
    outcomes.assert_all()


# -- a second reader: dcmqi -----------------------------------------------------------------------------------------


@needs_dcm2niix
@pytest.mark.skipif(rd.dcmqi_tool() is None, reason="dcmqi (segimage2itkimage) not installed")
@pytest.mark.parametrize("case", case_params(DCMQI_CASES))
def test_dcmqi_reads_seg_as_ground_truth(
    corpus: Corpus, case: rd.Case, segnode_convert: syn.ConvertRunner, tmp_path: Path
) -> None:
    """dcmqi's segimage2itkimage turns the SEG back into masks; at their voxel centres (mm) they are the truth."""
    (reference,) = [f for f in corpus.dcm2niix(case).files if not rd.is_resampled_dcm2niix(f)]
    (stack,) = corpus.stacks(case)
    truth = rd.ground_truth(stack, labels=2)
    labels = rd.write_label_map(reference, truth, tmp_path / "labels.nii.gz")
    seg = tmp_path / "seg.dcm"
    result = segnode_convert("--dicom", str(corpus.folder(case)), "--nifti", str(labels), "--out", str(seg))
    assert result.code == 0, result.stderr
    ds = pydicom.dcmread(seg, stop_before_pixels=True)
    numbers = sorted(int(item.SegmentNumber) for item in ds.SegmentSequence)
    assert len(numbers) == 2
    files = rd.run_segimage2itkimage(seg, tmp_path / "dcmqi")
    assert sorted(files) == numbers, f"dcmqi wrote segments {sorted(files)}, the SEG has {numbers}"
    problems = rd.check_against_itk_masks(files, truth, dict(zip(numbers, truth.labels, strict=True)))
    assert not problems, "\n".join(problems)


# -- the node end to end --------------------------------------------------------------------------------------------


def drop_into_inbox(inbox: Path, name: str, source: Path) -> Path:
    """Copy a label map into the inbox under a .part name and rename it, as a careful tool does."""
    partial = inbox / f"{name}.part"
    shutil.copyfile(source, partial)
    final = inbox / name
    partial.rename(final)
    return final


def export_sidecars(export: Path, uid: str) -> list[Path]:
    return sorted(p for p in export.glob(f"{uid}*.json") if not p.name.startswith("."))


def wait_for_exports(export: Path, uid: str) -> list[dict[str, Any]]:
    """Wait for the main export, then for as many stack exports as its sidecar announces."""
    wait_for(f"the export of series {uid}", (export / f"{uid}.json").exists, timeout=NODE_WAIT_S)
    main = json.loads((export / f"{uid}.json").read_text())
    count = int(main.get("stack", {}).get("count", 1))
    wait_for(f"{count} stack exports of {uid}", lambda: len(export_sidecars(export, uid)) >= count, timeout=NODE_WAIT_S)
    return [json.loads(p.read_text()) for p in export_sidecars(export, uid)]


def outgoing_segs(outgoing: Path) -> list[Path]:
    return sorted(p for p in outgoing.glob("*.dcm") if not p.name.startswith(".")) if outgoing.exists() else []


def push_case(port: int, source: rd.SourceFiles, folder: Path) -> None:
    """C-STORE the case's image files (not the vendor's directory files) with DCMTK storescu, each in its own
    transfer syntax (plain ``-R`` proposes only uncompressed syntaxes, and this storescu cannot decompress JPEG)."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in source.image_files]
    (sop_class,) = {str(h.SOPClassUID) for h in headers}
    syntaxes = sorted({str(h.file_meta.TransferSyntaxUID) for h in headers})
    folder.mkdir(parents=True, exist_ok=True)
    result = storescu(
        port,
        list(source.image_files),
        called_ae="SEGNODE",
        timeout=120,
        extra_args=tuple(storescu_config(folder, sop_class, syntaxes)),
    )
    assert result.ok, result.output[-2000:]
    assert set(result.statuses()) == {0}, f"statuses {sorted(set(result.statuses()))}"


@needs_dcmtk
@pytest.mark.slow
@pytest.mark.parametrize("case", case_params(NODE_CASES))
def test_node_end_to_end(corpus: Corpus, case: rd.Case, tmp_path: Path, running: list[Any]) -> None:
    """storescu -> node -> export per stack -> a label map named like each export -> its SEG in the destination.

    The label maps go in one at a time, each after the previous SEG arrived, so each SEG is known to come from its
    export; the SEGs of different stacks must reference different stacks of ours.
    """
    port = free_port()
    config = write_config(tmp_path / "node", port, folder_destination())
    running.append(start_node(config))
    data = tmp_path / "node" / "data"
    push_case(port, corpus.source(case), tmp_path)
    uid = case.series_uids[0]
    sidecars = wait_for_exports(data / "export", uid)
    mine = corpus.stacks(case)
    assert len(sidecars) == len(mine), f"{len(sidecars)} exports for {len(mine)} stacks"
    multiframe = mine[0][0].frame is not None
    outcomes = Outcomes()
    stacks_seen: list[set[rd.PlaneId]] = []
    for sidecar in sorted(sidecars, key=lambda s: int(s.get("stack", {}).get("index", 1))):
        index = int(sidecar.get("stack", {}).get("index", 1))
        nifti = data / "export" / str(sidecar["nifti"])
        fits = stack_for(rd.LabelMap.load(nifti), mine)
        truth = rd.ground_truth(fits[0] if fits else mine[0], labels=1 if index > 1 or case.id in ONE_LABEL else 2)
        labels = rd.write_label_map(nifti, truth, tmp_path / "labels" / nifti.name)
        before = set(outgoing_segs(data / "outgoing"))
        drop_into_inbox(data / "inbox", nifti.name, labels)
        wait_for(f"the SEG of {nifti.name}", new_seg_or_failure(data, before), timeout=NODE_WAIT_S)
        reasons = failed_reasons(data)
        assert not reasons, f"{nifti.name} failed in the node: {reasons}"
        (seg,) = set(outgoing_segs(data / "outgoing")) - before
        referenced = normalised(seg_sources(seg), multiframe)
        owner = [s for s in mine if referenced <= {p.id for p in s}]
        if len(owner) != 1:
            outcomes.failures.append(f"{nifti.name}: its SEG references planes of {len(owner)} of our stacks")
            continue
        stacks_seen.append({p.id for p in owner[0]})
        outcomes.run(
            f"{nifti.name} -> {seg.name}", check_seg_summary, seg, owner[0], rd.LabelMap.load(labels), truth, uid
        )
    distinct = {frozenset(s) for s in stacks_seen}
    if len(distinct) != len(stacks_seen):
        outcomes.failures.append("two exports gave SEGs over the same stack")
    outcomes.assert_all()


def new_seg_or_failure(data: Path, before: set[Path]) -> Callable[[], object]:
    def arrived() -> object:
        return (set(outgoing_segs(data / "outgoing")) - before) or failed_reasons(data)

    return arrived


def failed_reasons(data: Path) -> list[str]:
    failed = data / "failed"
    return [p.read_text().splitlines()[0] for p in failed.glob("*/reason.txt")] if failed.exists() else []


def check_seg_summary(
    seg: Path, stack: Sequence[rd.Plane], label_map: rd.LabelMap, truth: rd.GroundTruth, uid: str
) -> str:
    return check_seg_outcome(seg, stack, label_map, truth, uid, seg.name).summary()


@needs_dcmtk
@needs_dcm2niix
@pytest.mark.slow
@pytest.mark.parametrize("case", case_params(("mr_ph_dualecho",)))
def test_node_refuses_a_grid_that_fits_several_stacks(
    corpus: Corpus, case: rd.Case, tmp_path: Path, running: list[Any]
) -> None:
    """A tool's output on dcm2niix's echo-1 grid, under its own name, fits all four stacks: failed/ says why."""
    port = free_port()
    config = write_config(tmp_path / "node", port, folder_destination())
    running.append(start_node(config))
    data = tmp_path / "node" / "data"
    push_case(port, corpus.source(case), tmp_path)
    wait_for_exports(data / "export", case.series_uids[0])
    reference = next(f for f in corpus.dcm2niix(case).files if f.name.endswith("_e1.nii.gz"))
    truth = rd.ground_truth(corpus.stacks(case)[0], labels=2)
    labels = rd.write_label_map(reference, truth, tmp_path / "labels" / "totalseg_output.nii.gz")
    drop_into_inbox(data / "inbox", "totalseg_output.nii.gz", labels)
    failed = data / "failed"
    wait_for("the item in failed/", lambda: failed.exists() and list(failed.glob("*/reason.txt")), timeout=NODE_WAIT_S)
    (reason_file,) = failed.glob("*/reason.txt")
    summary = reason_file.read_text().split("\n\n", 1)[0].strip()
    assert summary and "\n" not in summary, f"reason is not one line: {summary!r}"
    assert "internal error" not in summary.lower() and "traceback" not in summary.lower(), summary
    assert "stack" in summary.lower() or "several" in summary.lower() or "fits" in summary.lower(), summary
    assert not outgoing_segs(data / "outgoing")


@needs_dcmtk
@pytest.mark.slow
@pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed")
@pytest.mark.parametrize("case", case_params(("mr_si_sag_hfs",)))
def test_node_sends_seg_to_orthanc(corpus: Corpus, case: rd.Case, tmp_path: Path, running: list[Any]) -> None:
    """The same round trip with Orthanc as the destination; the SEG Orthanc stores is checked in mm."""
    port = free_port()
    with OrthancServer(tmp_path) as orthanc:
        config = write_config(tmp_path / "node", port, dicom_destination(orthanc))
        running.append(start_node(config))
        data = tmp_path / "node" / "data"
        push_case(port, corpus.source(case), tmp_path)
        uid = case.series_uids[0]
        wait_for_exports(data / "export", uid)
        (stack,) = corpus.stacks(case)
        nifti = data / "export" / f"{uid}.nii.gz"
        truth = rd.ground_truth(stack, labels=2)
        labels = rd.write_label_map(nifti, truth, tmp_path / "labels" / nifti.name)
        drop_into_inbox(data / "inbox", nifti.name, labels)
        found = wait_for("a SEG in Orthanc", orthanc.find_seg_instances, timeout=NODE_WAIT_S)
        assert isinstance(found, list) and len(found) == 1
        seg = tmp_path / "from_orthanc.dcm"
        seg.write_bytes(orthanc.get_instance_file(found[0]))
        report = check_seg_outcome(seg, stack, rd.LabelMap.load(labels), truth, uid, "SEG from Orthanc")
        assert report.exact
