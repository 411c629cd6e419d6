"""``pgnotify check`` reports each shop's templates, which the daemon starts without."""

from __future__ import annotations

from pathlib import Path

from tests.cli.test_cli import pgnotify

GOOD = "5a0e8a52-9f0c-4d3b-9a51-2f7a3c1d0e11"
BROKEN = "00000000-0000-0000-0000-00000000b0b0"


def test_check_names_the_shop_and_the_file_that_does_not_compile(
    clean_db: str, tmp_path: Path
) -> None:
    """One line per shop folder: OK with its count, or FAIL naming the shop and the file
    (exit 1, as for any FAIL); the shipped templates keep their own line."""
    root = tmp_path / "templates"
    good = root / "shops" / GOOD / "en" / "booking_confirmed" / "sms.txt"
    broken = root / "shops" / BROKEN / "es" / "layout.html"
    for path, text in ((good, "Hola {{ time }}"), (broken, "{% if %}")):
        path.parent.mkdir(parents=True)
        path.write_text(text)
    env = {
        "DATABASE_URL": clean_db,
        "NOTIFICATION_OUTBOX_DIR": str(tmp_path / "outbox"),
        "NOTIFICATION_TEMPLATES_DIR": str(root),
    }
    proc = pgnotify("check", env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("OK templates:") for line in lines), lines
    assert f"OK shop {GOOD}: 1 template compiled" in lines
    (failed,) = [line for line in lines if line.startswith(f"FAIL shop {BROKEN}:")]
    assert "syntax error" in failed and str(broken) in failed
    assert [line for line in lines if line.startswith("FAIL")] == [failed]
