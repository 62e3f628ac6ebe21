"""`segnode install-service`: the system user, the folders, the configuration and the systemd unit.

The unit is rendered from the configuration it will run with, so that what the sandbox allows follows what the
node was told to do: the folders it writes (``[paths]``, folder destinations) are its only writable paths, and
the one capability it may hold, binding a port below 1024, is granted only when a configured port needs it.
Every step can be printed instead of done (``--dry-run``) and aimed at a staging root (``--root``) for packagers
and tests; the user is made by systemd-sysusers, which knows how to write into such a root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import node
from node.config import DEFAULT_CONFIG, Config, load_config
from node.errors import ConfigError, SegnodeError

USER = "segnode"
UNIT_NAME = "segnode.service"
#: Where the unit goes: the administrator's own units, which no package manager overwrites.
UNIT_FOLDER = Path("/etc/systemd/system")
SYSUSERS_FILE = Path("/etc/sysusers.d/segnode.conf")
#: The configuration in a checkout (copied to DEFAULT_CONFIG when that is absent).
CHECKOUT_CONFIG = Path(node.__file__).resolve().parent.parent / "config" / "segnode.toml"
#: Ports below this need CAP_NET_BIND_SERVICE.
PRIVILEGED_PORTS = 1024


def segnode_executable() -> list[str]:
    """This installation's ``segnode`` command: the console script beside this Python (a venv's bin/), else
    ``python -m node``. Not resolved through symlinks: a venv's python is a link to the system one."""
    script = Path(sys.executable).absolute().parent / "segnode"
    return [str(script)] if script.is_file() else [str(Path(sys.executable).absolute()), "-m", "node"]


def writable_folders(config: Config) -> list[Path]:
    """The folders the node writes: data, inbox, export and folder destinations, without nested repeats."""
    folders = [config.paths.data, config.paths.inbox, config.paths.export]
    for block in config.destinations:
        folder = getattr(block, "folder", None)  # a folder destination's; other kinds write nowhere
        if isinstance(folder, Path):
            folders.append(folder)
    unique = list(dict.fromkeys(Path(os.path.normpath(f)) for f in folders))  # in the order configured
    return [f for f in unique if not any(f != other and f.is_relative_to(other) for other in unique)]


def listening_ports(config: Config) -> list[int]:
    ports = [config.node.port] if config.tls.plain or not config.tls.port else []
    return ports + [port for port in (config.tls.port, config.http.port) if port]


def render_unit(config: Config, command: Iterable[str], config_path: Path = DEFAULT_CONFIG) -> str:
    """The text of ``segnode.service`` running ``command run --config config_path`` under ``config``."""
    start = " ".join([*command, "run", "--config", str(config_path)])
    low_ports = sorted(p for p in listening_ports(config) if p < PRIVILEGED_PORTS)
    if low_ports:
        ports = ", ".join(str(p) for p in low_ports)
        capabilities = (
            f"# Port {ports} is below 1024: the one capability the node holds is binding it.\n"
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n"
        )
    else:
        capabilities = (
            "# Every port is 1024 or above: no capabilities at all, and a user namespace of its own.\n"
            "CapabilityBoundingSet=\nPrivateUsers=yes\n"
        )
    writable = " ".join(str(f) for f in writable_folders(config))
    if config.export.command:
        # The [export] command runs in this sandbox too, and segmentation tools use the GPU and JIT compilers.
        devices = "# [export] command is set: the tool it runs may need the GPU (/dev/nvidia*), so devices stay.\n"
        memory = "# ... and JIT compilers (PyTorch's oneDNN, XLA) need pages both written and run.\n"
    else:
        devices = "PrivateDevices=yes\n"
        memory = (
            "# No JIT in the node: numpy, scipy, the pylibjpeg and GDCM decoders and ctypes work without pages\n"
            "# both written and run (tests/service/test_systemd.py converts a series under this restriction).\n"
            "MemoryDenyWriteExecute=yes\n"
        )
    return f"""\
# segnode as a systemd service; `segnode install-service` renders this file from the configuration and installs
# it (README.md, "Running under systemd"). This copy is the rendering for /opt/segnode and the default config.
[Unit]
Description=segnode DICOM SEG node (receive series, export NIfTI, send SEG back)
After=network-online.target
Wants=network-online.target

[Service]
# READY=1 once the node listens and has recovered its state; WATCHDOG=1 only while every stage makes progress.
Type=notify
NotifyAccess=main
ExecStart={start}
ExecReload=/bin/kill -HUP $MAINPID
User={USER}
Group={USER}
# Start-up recovery walks the data folder before READY=1; a large one takes a while.
TimeoutStartSec=300
# SIGTERM stops intake and drains; the node exits within 10 s, so 30 s is a generous ceiling.
KillSignal=SIGTERM
TimeoutStopSec=30
# A stage stalled longer than [node] stall_seconds stops the pings; after this the node is restarted.
WatchdogSec=60
Restart=on-failure
RestartSec=5
StateDirectory=segnode
StateDirectoryMode=0750
WorkingDirectory={config.paths.data}
UMask=0027
LimitNOFILE=65536

# Sandbox: the node needs its folders, IP networking and its own processes, nothing else.
ReadWritePaths={writable}
{capabilities}NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
{devices}ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
{memory}RemoveIPC=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


@dataclass
class Plan:
    """The install steps, each described before it is done (or only described, for a dry run)."""

    root: Path
    dry_run: bool
    say: Callable[[str], None] = print
    done: list[str] = field(default_factory=list)

    def path(self, absolute: Path) -> Path:
        return self.root / absolute.relative_to("/")

    def step(self, description: str, action: Callable[[], object]) -> None:
        self.say(("would " if self.dry_run else "") + description)
        self.done.append(description)
        if not self.dry_run:
            action()


class InstallError(SegnodeError):
    """A step of the installation failed; the message names the command and what it said."""


def _command(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise InstallError(f"{' '.join(argv)} exited with {done.returncode}: {said[-1] if said else 'no output'}")


def _user_ids(root: Path) -> tuple[int, int] | None:
    """The uid and gid of USER in ``root``'s /etc/passwd (not the host's, when ``root`` is a staging root)."""
    try:
        lines = (root / "etc/passwd").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) > 3 and fields[0] == USER:
            return int(fields[2]), int(fields[3])
    return None


def _create_user(plan: Plan, home: Path) -> None:
    if _user_ids(plan.root) is not None:
        plan.say(f"user {USER}: exists")
        return
    sysusers = plan.path(SYSUSERS_FILE)
    entry = f'u {USER} - "segnode DICOM node" {home} /usr/sbin/nologin\n'

    def create() -> None:
        sysusers.parent.mkdir(parents=True, exist_ok=True)
        sysusers.write_text(entry)
        if shutil.which("systemd-sysusers"):
            # It picks a free system uid and writes passwd, group and shadow, inside a staging root if asked to;
            # the file is named by its path on this machine (sysusers does not resolve arguments in the root).
            _command(["systemd-sysusers", f"--root={plan.root}", str(sysusers)])
        else:
            _command(
                [
                    *("useradd", "--system", "--user-group", "--root", str(plan.root), "--home-dir", str(home)),
                    *("--no-create-home", "--shell", "/usr/sbin/nologin", "--comment", "segnode DICOM node", USER),
                ]
            )

    plan.step(f"create system user {USER} ({SYSUSERS_FILE}, systemd-sysusers)", create)


def _folder(plan: Plan, absolute: Path, mode: int, group_only: bool, *, adopt: bool = True) -> None:
    """Create a folder for the service; an existing one is given to it only when ``adopt`` (the node's own
    ``[paths]``), so a shared folder (a folder destination another service reads) keeps its owner and mode."""
    target = plan.path(absolute)
    if target.is_dir() and not adopt:
        plan.say(f"{target}: exists, owner and mode kept; user {USER} must be able to write into it")
        return

    def make() -> None:
        target.mkdir(parents=True, exist_ok=True)
        ids = _user_ids(plan.root)
        if ids is not None and os.geteuid() == 0:
            os.chown(target, 0 if group_only else ids[0], ids[1])
        target.chmod(mode)

    owner = f"root:{USER}" if group_only else f"{USER}:{USER}"
    plan.step(f"create {target} ({owner}, {mode:o})", make)


def _systemd_running(root: Path) -> bool:
    return root == Path("/") and Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def install(
    *,
    root: Path = Path("/"),
    source_config: Path | None = None,
    dry_run: bool = False,
    say: Callable[[str], None] = print,
) -> Plan:
    """Install segnode as a service into ``root``; return the plan of what was (or would be) done.

    The node runs with ``root``/etc/segnode/segnode.toml; a missing one is copied from ``source_config``
    (default: the checkout's config/segnode.toml) first, so the unit is rendered from what will run.
    """
    plan = Plan(root=root.absolute(), dry_run=dry_run, say=say)
    installed = plan.path(DEFAULT_CONFIG)
    source = installed if installed.is_file() else (source_config or CHECKOUT_CONFIG)
    if not source.is_file():
        raise ConfigError(f"{source}: no configuration to install; pass --config FILE")
    # Read as the copy the node will run with: its relative paths resolve against /etc/segnode, not the source's.
    config = load_config(source, located_at=DEFAULT_CONFIG)
    _create_user(plan, config.paths.data)
    _folder(plan, DEFAULT_CONFIG.parent, 0o750, group_only=True, adopt=False)
    if source != installed:

        def copy() -> None:
            shutil.copyfile(source, installed)
            ids = _user_ids(plan.root)
            if ids is not None and os.geteuid() == 0:
                os.chown(installed, 0, ids[1])
            installed.chmod(0o640)

        plan.step(f"copy {source} to {installed} (root:{USER}, 640)", copy)
    else:
        say(f"{installed}: exists, kept")
    own = {config.paths.data, config.paths.inbox, config.paths.export}
    for folder in writable_folders(config):
        _folder(plan, folder, 0o750, group_only=False, adopt=folder in own)
    unit = plan.path(UNIT_FOLDER / UNIT_NAME)
    text = render_unit(config, segnode_executable())

    def write_unit() -> None:
        unit.parent.mkdir(parents=True, exist_ok=True)
        temporary = unit.with_name(f".{unit.name}.tmp")
        temporary.write_text(text)
        temporary.chmod(0o644)
        temporary.replace(unit)

    plan.step(f"write {unit} (ExecStart={segnode_executable()[0]} ...)", write_unit)
    if _systemd_running(plan.root):
        plan.step("run systemctl daemon-reload", lambda: _command(["systemctl", "daemon-reload"]))
        say(f"then: systemctl enable --now {UNIT_NAME}")
    else:
        say(f"systemd is not running here{'' if plan.root == Path('/') else ' (staging root)'}: no daemon-reload")
    return plan
