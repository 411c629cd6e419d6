"""systemd restarts the daemon after a crash, never after a start that cannot work."""

from __future__ import annotations

import re
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "pgnotify.service"


def test_exit_2_is_not_restarted_in_a_loop() -> None:
    """Exit 2 (a bad setting, an unmigrated database, a refused role) needs an operator:
    ``RestartPreventExitStatus=2`` keeps ``Restart=on-failure`` from repeating it."""
    text = UNIT.read_text()
    assert re.search(r"^Restart=on-failure$", text, re.M)
    prevent = re.findall(r"^RestartPreventExitStatus=(.*)$", text, re.M)
    assert prevent and "2" in prevent[-1].split(), prevent
