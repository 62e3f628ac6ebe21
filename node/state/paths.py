"""Paths as the state stores them: relative to the data folder when inside it, so the folder can move.

A path outside the data folder (an inbox configured elsewhere) is stored absolute. A stored absolute path (every
path in a database written before paths were relative) is read back as it is.

>>> paths = StoredPaths(Path("/var/lib/segnode"))
>>> paths.store(Path("/var/lib/segnode/instances/1.2/3.dcm"))
'instances/1.2/3.dcm'
>>> paths.store(Path("/srv/inbox/a.nii.gz"))
'/srv/inbox/a.nii.gz'
>>> paths.load("instances/1.2/3.dcm")
PosixPath('/var/lib/segnode/instances/1.2/3.dcm')
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


class StoredPaths:
    """Converts between the paths callers use (absolute) and the text a back end stores."""

    def __init__(self, data_folder: Path) -> None:
        self.data_folder = Path(os.path.abspath(data_folder))

    def store(self, path: Path | str) -> str:
        """The text to store for ``path`` (a relative ``path`` is taken relative to the working folder)."""
        absolute = Path(os.path.abspath(path))
        try:
            relative = absolute.relative_to(self.data_folder)
        except ValueError:
            return str(absolute)
        return PurePosixPath(*relative.parts).as_posix() if relative.parts else "."

    def load(self, text: str) -> Path:
        """The absolute path that stored ``text`` names."""
        path = Path(text)
        return path if path.is_absolute() else self.data_folder / path
