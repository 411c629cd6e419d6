"""Where the files that ship with pgnotify are found: the SQL migrations and the templates.

Both folders live at the top of the repository (``sql/``, ``templates/``); ``pgnotify/sql``
and ``pgnotify/templates`` are symlinks to them, and the wheel copies their files into the
package. So a checkout, an editable install and a wheel installed anywhere all find them the
same way, through the package's resources: never through the working directory.

A folder that is missing or empty is a broken install, never "nothing to do": ``migrate``
and ``check`` must not report success having found no SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from pgnotify.errors import InstallationError


def _packaged(name: str, what: str, present: Callable[[Path], bool]) -> Path:
    # A wheel is installed as files on disk (pip never imports from a zip), so the
    # resource is a real directory.
    path = Path(str(resources.files("pgnotify").joinpath(name)))
    if not present(path):
        raise InstallationError(
            f"no {what} in {path}: this install of pgnotify is missing its {name}/ folder;"
            " reinstall the wheel"
        )
    return path


def sql_dir() -> Path:
    """The folder of numbered migrations; raises when the install has none."""
    return _packaged("sql", "SQL migrations", lambda p: any(p.glob("[0-9][0-9][0-9]_*.sql")))


def templates_dir() -> Path:
    """The folder of default templates (one folder per locale); raises when it is missing."""
    return _packaged("templates", "templates", lambda p: (p / "en").is_dir())
