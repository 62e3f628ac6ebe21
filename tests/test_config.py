"""Tests of node/config.py: every key loads, defaults live in one place, and every mistake is one clear line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from node.config import (
    Config,
    DicomDestination,
    FolderDestination,
    NodeConfig,
    ae_title_problem,
    load_config,
)
from node.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

FULL = """
[node]
ae_title = "MYNODE"
bind = "127.0.0.1"
port = 4242
max_associations = 3
log_level = "DEBUG"
[paths]
data = "state"
inbox = "/srv/inbox"
export = "out/export"
[series]
quiet_seconds = 12
[inbox]
settle_seconds = 1.5
poll = true
[export]
enabled = false
command = "tool -i {nifti} -o {inbox}/{series_uid} --meta {sidecar}"
command_timeout = 60
[seg]
type = "labelmap"
algorithm_name = "TotalSegmentator"
algorithm_version = "2.4"
labels = "labels.json"
series_description = "AI SEG"
[send]
max_attempts = 3
backoff_initial = 1
backoff_max = 10.5
timeout = 7
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "pacs.example"
port = 104
[[destinations]]
name = "copy"
folder = "outgoing"
"""


def write(tmp_path: Path, text: str, name: str = "segnode.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_config_runs_without_a_pacs() -> None:
    config = load_config(REPO / "config" / "segnode.toml")
    assert config.node.port == 11112
    assert config.node.ae_title == "SEGNODE"
    assert config.paths.data == Path("/var/lib/segnode")
    assert config.paths.inbox.is_relative_to("/var/lib/segnode")
    assert config.paths.export.is_relative_to("/var/lib/segnode")
    assert not [d for d in config.destinations if isinstance(d, DicomDestination)]
    folders = [d for d in config.destinations if isinstance(d, FolderDestination)]
    assert len(folders) == 1 and folders[0].folder.is_relative_to("/var/lib/segnode")


def test_shipped_config_states_the_defaults() -> None:
    """The shipped file and the dataclass defaults must not drift apart (destinations aside)."""
    shipped = load_config(REPO / "config" / "segnode.toml")
    defaults = Config()
    for section in ("node", "paths", "series", "inbox", "export", "seg", "send"):
        assert getattr(shipped, section) == getattr(defaults, section), section


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config == Config(source=(tmp_path / "segnode.toml").absolute())
    assert config.series.quiet_seconds == 30.0
    assert config.send.max_attempts == 10
    assert config.seg.labels is None
    assert config.destinations == ()


def test_every_key_is_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert config.node == NodeConfig(
        ae_title="MYNODE", bind="127.0.0.1", port=4242, max_associations=3, log_level="DEBUG"
    )
    assert config.paths.data == tmp_path / "state"
    assert config.paths.inbox == Path("/srv/inbox")
    assert config.paths.export == tmp_path / "out" / "export"
    assert config.paths.database.parent == tmp_path / "state"
    assert config.series.quiet_seconds == 12.0 and isinstance(config.series.quiet_seconds, float)
    assert (config.inbox.settle_seconds, config.inbox.poll) == (1.5, True)
    assert (config.export.enabled, config.export.command_timeout) == (False, 60.0)
    assert "{sidecar}" in config.export.command
    assert (config.seg.type, config.seg.algorithm_name, config.seg.algorithm_version) == (
        "labelmap",
        "TotalSegmentator",
        "2.4",
    )
    assert config.seg.labels == tmp_path / "labels.json"
    assert config.seg.series_description == "AI SEG"
    assert (config.send.max_attempts, config.send.backoff_initial, config.send.backoff_max, config.send.timeout) == (
        3,
        1.0,
        10.5,
        7.0,
    )
    assert config.destinations == (
        DicomDestination(name="pacs", ae_title="PACS", host="pacs.example", port=104),
        FolderDestination(name="copy", folder=tmp_path / "outgoing"),
    )
    assert config.destination("copy").name == "copy"
    with pytest.raises(ConfigError, match=r"no destination named 'nope'.*pacs, copy"):
        config.destination("nope")


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        pytest.param(
            'ae_title = "PACS"\nhost = "h"\nport = 104\n', DicomDestination("d", "PACS", "h", 104), id="dicom-inferred"
        ),
        pytest.param(
            'kind = "dicom"\nae_title = "PACS"\nhost = "h"\nport = 104\n',
            DicomDestination("d", "PACS", "h", 104),
            id="dicom-explicit",
        ),
        pytest.param('folder = "out"\n', FolderDestination("d", Path("out")), id="folder-inferred"),
        pytest.param('kind = "folder"\nfolder = "out"\n', FolderDestination("d", Path("out")), id="folder-explicit"),
    ],
)
def test_kind_is_explicit_or_inferred_from_the_keys(tmp_path: Path, block: str, expected: object) -> None:
    config = load_config(write(tmp_path, f'[[destinations]]\nname = "d"\n{block}'))
    if isinstance(expected, FolderDestination):
        expected = FolderDestination("d", tmp_path / expected.folder)
    assert config.destinations == (expected,)
    assert config.destination("d").kind == ("folder" if isinstance(expected, FolderDestination) else "dicom")


def test_relative_paths_follow_the_config_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    write(folder, '[paths]\ndata = "data"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config(Path("etc/segnode.toml")).paths.data == folder / "data"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[node]\nprot = 104\n", "[node] prot: expected no such key"),
        ("[nodes]\nport = 104\n", "nodes: expected no such section"),
        ("[node]\nport = 0\n", "[node] port: expected a number from 1 to 65535, got 0"),
        ("[node]\nport = 70000\n", "[node] port: expected a number from 1 to 65535"),
        ('[node]\nport = "104"\n', "[node] port: expected an integer, got '104'"),
        ("[node]\nport = true\n", "[node] port: expected an integer, got True"),
        ('[node]\nae_title = "A_VERY_LONG_AE_TITLE"\n', "[node] ae_title: expected an AE title of 1-16"),
        ('[node]\nae_title = "BAD\\\\AE"\n', "[node] ae_title: expected an AE title"),
        ('[node]\nae_title = ""\n', "[node] ae_title: expected an AE title"),
        ('[node]\nae_title = "TAB\\tAE"\n', "[node] ae_title: expected an AE title"),
        ('[node]\nlog_level = "LOUD"\n', "[node] log_level: expected one of 'DEBUG'"),
        ("[node]\nreceive_processes = 0\n", "[node] receive_processes: expected a number from 1 to 64, got 0"),
        ('[inbox]\npoll = "yes"\n', "[inbox] poll: expected true or false"),
        ("[series]\nquiet_seconds = -1\n", "[series] quiet_seconds: expected a number from 0"),
        ('[seg]\ntype = "mask"\n', "[seg] type: expected one of 'binary', 'labelmap', 'fractional'"),
        ('[export]\ncommand = "run {nifty}"\n', "[export] command: expected a command using only the placeholders"),
        ('[export]\ncommand = "run {nifti"\n', "[export] command: expected a command whose braces are balanced"),
        ("[send]\nbackoff_initial = 10\nbackoff_max = 5\n", "[send] backoff_max: expected a number of at least"),
        ("[paths]\ndata = 5\n", "[paths] data: expected a path"),
        ('[paths]\ndata = ""\n', "[paths] data: expected a path"),
        ("destinations = 3\n", "destinations: expected an array of tables"),
        ('[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\n', "[[destinations]] 'p' port: expected a value"),
        (
            '[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 0\n',
            "[[destinations]] 'p' port: expected a port from 1 to 65535",
        ),
        (
            '[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 104\nfolder = "/x"\n',
            "[[destinations]] 'p' ae_title: expected no such key (a folder destination has only name and folder)",
        ),
        (
            '[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 104\naet = "P"\n',
            "[[destinations]] 'p' aet: expected no such key",
        ),
        (
            '[[destinations]]\nname = "p"\nae_title = "ABCDEFGHIJKLMNOPQ"\nhost = "h"\nport = 104\n',
            "[[destinations]] 'p' ae_title: expected an AE title",
        ),
        ('[[destinations]]\nname = "a b"\nfolder = "/x"\n', "[[destinations]] #1 name: expected a name"),
        ('[[destinations]]\nfolder = "/x"\n', "[[destinations]] #1 name: expected a name"),
        (
            '[[destinations]]\nname = "x"\nfolder = "/x"\n[[destinations]]\nname = "x"\nfolder = "/y"\n',
            "[[destinations]] 'x' name: expected a name used by one destination only",
        ),
        ('[[destinations]]\nname = "p"\n', "[[destinations]] 'p' kind: expected a value, one of 'dicom', 'folder'"),
        (
            '[[destinations]]\nname = "p"\nkind = "stow"\n',
            "[[destinations]] 'p' kind: expected one of 'dicom', 'folder', got 'stow'",
        ),
        (
            '[[destinations]]\nname = "p"\nkind = 3\nfolder = "/x"\n',
            "[[destinations]] 'p' kind: expected one of 'dicom', 'folder', got 3",
        ),
        (
            '[[destinations]]\nname = "p"\nkind = "folder"\nae_title = "P"\n',
            "[[destinations]] 'p' ae_title: expected no such key (a folder destination has only name and folder)",
        ),
        (
            '[[destinations]]\nname = "p"\nkind = "dicom"\nfolder = "/x"\n',
            "[[destinations]] 'p' folder: expected no such key"
            " (a DICOM destination has only name, ae_title, host, port and tls)",
        ),
        (
            '[[destinations]]\nname = "p"\nkind = "dicom"\nae_title = "P"\nport = 104\n',
            "[[destinations]] 'p' host: expected a value (a DICOM destination needs ae_title, host and port)",
        ),
        (
            '[[destinations]]\nname = "p"\nkind = "folder"\n',
            "[[destinations]] 'p' folder: expected a value (a folder destination needs folder)",
        ),
        (
            '[[destinations]]\nname = "p"\nae_title = "P"\nhost = " "\nport = 104\n',
            "[[destinations]] 'p' host: expected a host name or address, got ' '",
        ),
        ("[node\nport = 1\n", "not valid TOML"),
    ],
)
def test_mistakes_are_one_line_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert expected in message
    assert message.startswith(str(path.absolute()))
    assert "\n" not in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read the configuration file"):
        load_config(tmp_path / "missing.toml")


def test_config_error_is_a_value_error_and_not_retryable(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        load_config(write(tmp_path, "[node]\nport = 0\n"))
    assert isinstance(caught.value, ConfigError) and not caught.value.retryable


@pytest.mark.parametrize(
    ("title", "ok"),
    [
        ("SEGNODE", True),
        ("A", True),
        ("X" * 16, True),
        ("WITH SPACE", True),
        ("X" * 17, False),
        ("", False),
        ("    ", False),
        ("BACK\\SLASH", False),
        ("NUL\x00", False),
        ("ÄE", False),
    ],
)
def test_ae_title_rules(title: str, ok: bool) -> None:
    assert (ae_title_problem(title) is None) is ok


def test_tls_files_are_checked_to_be_there_at_load_and_loaded_only_when_asked(tmp_path: Path) -> None:
    from tls_certs import make_pki

    from node.config import check_tls_files

    pki = make_pki(tmp_path / "pki")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    tls = f'[tls]\nport = 2762\ncertificate = "{broken}"\nprivate_key = "{pki.server_key}"\n'
    config = load_config(write(tmp_path, tls))  # `segnode status` needs no key it cannot read
    with pytest.raises(ConfigError, match=r"\[tls\] certificate: expected a PEM certificate matching private_key"):
        check_tls_files(config)
    good = f'[tls]\nport = 2762\ncertificate = "{pki.server_certificate}"\nprivate_key = "{pki.server_key}"\n'
    check_tls_files(load_config(write(tmp_path, good)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[tls]\ncertificate = "{cert}"\n', "[tls] private_key: expected a private key with the certificate"),
        (
            '[node]\nport = 2762\n[tls]\nport = 2762\ncertificate = "{cert}"\nprivate_key = "{key}"\n',
            "[tls] port: expected a port other than [node] port (2762), got 2762",
        ),
    ],
)
def test_tls_keys_that_cannot_work_together_fail_at_load(tmp_path: Path, text: str, expected: str) -> None:
    from tls_certs import make_pki

    pki = make_pki(tmp_path / "pki")
    path = write(tmp_path, text.format(cert=pki.server_certificate, key=pki.server_key))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value)
