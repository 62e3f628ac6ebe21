"""node/destinations/__init__.py: kinds are registered, loaded from [[destinations]] blocks and used through the
Destination Protocol; and the shared results (backoff) and the compatibility calls of the old API."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from node import destinations
from node.config import load_config
from node.destinations import Destination, Outcome, SendResult, backoff_delay
from node.destinations.dimse import DicomDestination
from node.destinations.folder import FolderDestination
from node.errors import ConfigError


@dataclass(frozen=True)
class BucketDestination:
    """A made-up kind: a bucket with a retention in days."""

    kind: ClassVar[str] = "bucket"
    title: ClassVar[str] = "bucket"

    name: str
    bucket: str
    days: int = 7

    def describe(self) -> str:
        return f"{self.name} (bucket {self.bucket})"


class Bucket:
    """Keeps what it is sent; files whose name says "busy" are RETRY."""

    def __init__(self, config: BucketDestination, calling_ae: str, timeout: float) -> None:
        self.config, self.calling_ae, self.timeout = config, calling_ae, timeout
        self.kept: list[Path] = []

    @property
    def name(self) -> str:
        return self.config.name

    def describe(self) -> str:
        return self.config.describe()

    def send(self, paths: Sequence[Path]) -> list[SendResult]:
        results = []
        for path in paths:
            if "busy" in path.name:
                results.append(SendResult(path, Outcome.RETRY, None, f"{self.describe()}: busy"))
            else:
                self.kept.append(path)
                results.append(SendResult(path, Outcome.SENT, None, "kept"))
        return results

    def check(self) -> str | None:
        return None


def make_bucket(config: BucketDestination, *, calling_ae: str, timeout: float, tls: object = None) -> Destination:
    return Bucket(config, calling_ae, timeout)


@pytest.fixture
def bucket_kind() -> Iterator[None]:
    destinations.register("bucket", make_bucket, BucketDestination)
    try:
        yield
    finally:
        destinations.unregister("bucket")


def test_builtin_kinds() -> None:
    assert destinations.kinds()[:2] == ("dicom", "folder")
    assert destinations.config_type("dicom") is DicomDestination
    assert destinations.config_type("folder") is FolderDestination


def test_a_registered_kind_loads_from_a_block_and_sends_through_the_protocol(bucket_kind: None, tmp_path: Path) -> None:
    path = tmp_path / "segnode.toml"
    path.write_text(
        '[node]\nae_title = "ME"\n[send]\ntimeout = 3\n'
        '[[destinations]]\nkind = "bucket"\nname = "b"\nbucket = "segs"\n',
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.destinations == (BucketDestination(name="b", bucket="segs", days=7),)
    assert "bucket" in destinations.kinds()

    destination = destinations.create(
        config.destination("b"), calling_ae=config.node.ae_title, timeout=config.send.timeout
    )
    assert isinstance(destination, Bucket)
    assert (destination.calling_ae, destination.timeout) == ("ME", 3.0)
    assert (destination.name, destination.describe(), destination.check()) == ("b", "b (bucket segs)", None)
    results = destination.send([tmp_path / "a.dcm", tmp_path / "busy.dcm"])
    assert [(r.path.name, r.outcome) for r in results] == [("a.dcm", Outcome.SENT), ("busy.dcm", Outcome.RETRY)]


def test_a_registered_kind_validates_its_keys(bucket_kind: None, tmp_path: Path) -> None:
    path = tmp_path / "segnode.toml"
    for block, expected in [
        (
            'bucket = "s"\nday = 3\n',
            "[[destinations]] 'b' day: expected no such key (a bucket destination has only name, bucket and days)",
        ),
        ("days = 3\n", "[[destinations]] 'b' bucket: expected a value (a bucket destination needs bucket)"),
        ('bucket = "s"\ndays = "3"\n', "[[destinations]] 'b' days: expected an integer, got '3'"),
    ]:
        path.write_text(f'[[destinations]]\nkind = "bucket"\nname = "b"\n{block}', encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert str(caught.value) == f"{path}: {expected}"


def test_unregistered_kind_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"unknown destination kind 'bucket' \(known: dicom, folder"):
        destinations.config_type("bucket")


def test_register_refuses_a_mismatched_or_taken_kind(bucket_kind: None) -> None:
    with pytest.raises(ValueError, match=r"BucketDestination\.kind must be 'pail'"):
        destinations.register("pail", make_bucket, BucketDestination)
    with pytest.raises(ValueError, match="'folder' is already registered"):
        destinations.register("folder", make_bucket, type("OtherFolder", (), {"kind": "folder"}))


def test_backoff_grows_then_caps() -> None:
    exact = [backoff_delay(n, 5.0, 300.0, jitter=0) for n in range(1, 12)]
    assert exact[:4] == [5.0, 10.0, 20.0, 40.0]
    assert exact[-1] == 300.0 and max(exact) == 300.0
    assert all(a <= b for a, b in itertools.pairwise(exact))
    assert backoff_delay(10_000, 5.0, 300.0, jitter=0) == 300.0
    for n in range(1, 12):
        jittered = backoff_delay(n, 5.0, 300.0)
        assert 0.9 * exact[n - 1] <= jittered <= exact[n - 1]
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0, 5.0, 300.0)


def test_every_factory_is_given_the_nodes_tls_section(bucket_kind: None, tmp_path: Path) -> None:
    from node.config.sections import TlsConfig

    tls = TlsConfig(ca_certificates=Path("/etc/ssl/ca.pem"))
    given: list[object] = []

    def make_secure(config: BucketDestination, *, calling_ae: str, timeout: float, tls: TlsConfig | None) -> Bucket:
        given.append(tls)
        return Bucket(config, calling_ae, timeout)

    destinations.register("bucket", make_secure, BucketDestination)
    made = destinations.create(BucketDestination("b", "segs"), calling_ae="ME", timeout=1.0, tls=tls)
    destinations.create(BucketDestination("b", "segs"), calling_ae="ME", timeout=1.0)
    assert isinstance(made, Bucket) and (made.calling_ae, made.timeout) == ("ME", 1.0)
    assert given == [tls, None]
    # A kind that never uses TLS takes the section and ignores it.
    folder = destinations.create(FolderDestination("out", tmp_path), calling_ae="ME", timeout=1.0, tls=tls)
    assert folder.describe() == f"out (folder {tmp_path})"
