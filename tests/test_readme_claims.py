"""Every behavioural claim of README.md names the tests that hold it to its word.

``tests/readme_claims.toml`` sorts every *claim unit* of the README into one of three
lists, each entry identified by a short exact ``quote`` of the README:

* ``claims``: the quote is backed by the named tests (``tests/...py::test_name``, a
  parametrised id's ``[...]`` is ignored);
* ``untested``: behaviour the README promises and no test checks yet (one line each; shown
  as a warning on every run, so the gap stays visible without failing the suite);
* ``not_claims``: text that promises no behaviour (an instruction, an introduction, an
  example); the ``why`` says which.

Claim units are cut from README.md mechanically, outside fenced blocks unless said:

* each row of a table body (the header row and the ``|---|`` row are not claims);
* each sentence of a paragraph and of a bullet item (its indented continuation lines
  included); sentences end at ``.``, ``!`` or ``?`` followed by white space and a capital,
  a backtick, ``*``, ``(`` or ``[``;
* inside a ```` ```sql ```` block, each sentence of each group of consecutive ``--``
  comment lines (the statements are examples);
* inside a fence without a language, each command of the command reference: a line
  starting with ``pgnotify `` plus the indented lines under it (the architecture diagram
  has none);
* headings, ```` ```sh ```` blocks (commands to type) and other code are not claims.

White space is normalised (runs become one space) before any comparison, so a quote may
cross a line break. The test fails when a quote no longer appears in README.md, matches
no claim unit or more than one, names a test that does not exist, or when a claim unit is
in none of the three lists; and a unit listed as ``not_claims`` cannot also be mapped.
"""

from __future__ import annotations

import importlib
import re
import tomllib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLAIMS = Path(__file__).with_name("readme_claims.toml")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`*(\[])")
_BULLET = re.compile(r"^\s*(?:[-*]|\d+\.) ")
_FENCE = re.compile(r"^\s*```(\w*)")


class UntestedReadmeClaim(UserWarning):
    """A README promise that no test checks yet (listed in ``untested``)."""


@dataclass(frozen=True)
class Unit:
    """One claim unit of the README: its normalised text and the line it starts on."""

    line: int
    text: str


def normalise(text: str) -> str:
    return " ".join(text.split())


def sentences(line: int, text: str) -> Iterator[Unit]:
    for part in _SENTENCE_END.split(normalise(text)):
        if part:
            yield Unit(line, part)


def claim_units(markdown: str) -> list[Unit]:
    """The README cut into claim units by the rules of this module's docstring."""
    units: list[Unit] = []
    block: list[str] = []  # the paragraph, bullet item, comment group or command so far
    block_line = 0
    block_split = True  # sentences (prose, comments) or one unit (a command)
    fence: str | None = None  # the language of the fenced block we are in, if any
    table_row = 0

    def flush() -> None:
        nonlocal block
        if block:
            text = " ".join(block)
            units.extend(
                sentences(block_line, text) if block_split else [Unit(block_line, normalise(text))]
            )
        block = []

    def start(number: int, text: str, split: bool = True) -> None:
        nonlocal block, block_line, block_split
        flush()
        block, block_line, block_split = [text], number, split

    for number, raw in enumerate(markdown.splitlines(), start=1):
        stripped = raw.strip()
        opening = _FENCE.match(raw)
        if fence is None and opening:
            flush()
            fence = opening.group(1)
            continue
        if fence is not None:
            if stripped.startswith("```"):
                flush()
                fence = None
            elif fence == "sql":
                if stripped.startswith("--"):
                    text = stripped.removeprefix("--").strip()
                    if block and block_split:
                        block.append(text)
                    else:
                        start(number, text)
                else:
                    flush()
            elif fence == "":
                if raw.startswith("pgnotify "):
                    start(number, raw, split=False)
                elif block and raw[:1].isspace() and stripped:
                    block.append(stripped)
                else:
                    flush()
            continue
        if stripped.startswith("|"):
            flush()
            table_row += 1
            if table_row > 1 and not re.fullmatch(r"\|[\s|:-]+\|", stripped):
                units.append(Unit(number, normalise(stripped)))
            continue
        table_row = 0
        if not stripped or stripped.startswith("#"):
            flush()
        elif _BULLET.match(raw):
            start(number, _BULLET.sub("", raw))
        elif block:
            block.append(stripped)
        else:
            start(number, stripped)
    flush()
    return units


def load_claims() -> dict[str, list[dict[str, Any]]]:
    with CLAIMS.open("rb") as fh:
        data = tomllib.load(fh)
    assert set(data) <= {"claims", "untested", "not_claims"}, f"unknown lists: {set(data)}"
    return {name: data.get(name, []) for name in ("claims", "untested", "not_claims")}


def names_a_test(node: str) -> bool:
    """Whether ``tests/x/test_y.py::[Class::]test_name[param]`` names a collectable test."""
    path, _, name = node.partition("::")
    if not (path.startswith("tests/") and path.endswith(".py") and name):
        return False
    if not (ROOT / path).is_file():
        return False
    module: Any = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    target: Any = module
    for part in re.sub(r"\[.*\]$", "", name).split("::"):
        target = getattr(target, part, None)
        if target is None:
            return False
    return callable(target) and target.__name__.startswith(("test", "Test"))


def test_every_readme_claim_is_mapped_to_existing_tests_or_listed_as_untested() -> None:
    """The mapping is exact and complete: a README change or a renamed test shows here."""
    readme = README.read_text(encoding="utf-8")
    whole = normalise(readme)  # a quote within SQL comments lacks their "--": see units
    units = claim_units(readme)
    lists = load_claims()
    problems: list[str] = []
    covered: dict[Unit, set[str]] = {}
    for kind, entries in lists.items():
        for entry in entries:
            quote = normalise(str(entry.get("quote", "")))
            if not quote:
                problems.append(f"{kind}: an entry without a quote: {entry}")
                continue
            if quote not in whole and not any(quote in u.text for u in units):
                problems.append(f"{kind}: no longer in README.md: {quote!r}")
                continue
            matches = [u for u in units if quote in u.text]
            if len(matches) != 1:
                where = ", ".join(f"line {u.line}" for u in matches) or "no claim unit"
                problems.append(f"{kind}: {quote!r} must lie within exactly one unit: {where}")
                continue
            covered.setdefault(matches[0], set()).add(kind)
            if kind == "claims":
                tests = entry.get("tests", [])
                if not tests:
                    problems.append(f"claims: {quote!r} names no test")
                problems += [
                    f"claims: {quote!r}: no test {t}" for t in tests if not names_a_test(t)
                ]
            elif not str(entry.get("why", "")).strip():
                problems.append(f"{kind}: {quote!r} needs a one-line 'why'")
    for unit, kinds in covered.items():
        if "not_claims" in kinds and len(kinds) > 1:
            problems.append(f"README line {unit.line} is both a claim and not: {unit.text!r}")
    problems += [
        f"README line {u.line}: no entry in tests/readme_claims.toml: {u.text!r}"
        for u in units
        if u not in covered
    ]
    assert not problems, "\n".join(problems)
    if lists["untested"]:
        gaps = "".join(f"\n  - {e['quote']!r}: {e['why']}" for e in lists["untested"])
        warnings.warn(
            UntestedReadmeClaim(
                f"{len(lists['untested'])} README claims have no test yet"
                f" (tests/readme_claims.toml, untested):{gaps}"
            ),
            stacklevel=1,
        )


def test_claim_units_are_cut_as_documented() -> None:
    """The cutting rules on a small document: what counts as a claim and what does not."""
    sample = "\n".join(
        [
            "# Title",
            "Intro one. Intro two, with `code`.",
            "",
            "| a | b |",
            "|---|---|",
            "| row | one |",
            "",
            "- **Bullet**: first sentence. `second` sentence",
            "  continues here.",
            "",
            "```sql",
            "-- A comment. Its second sentence.",
            "select 1;",
            "-- Another group.",
            "```",
            "```",
            "pgnotify run      the daemon",
            "                  in the foreground",
            "```",
            "```",
            "  a diagram ──▶ pgnotify run",
            "```",
            "```sh",
            "make test   # not a claim",
            "```",
        ]
    )
    assert [u.text for u in claim_units(sample)] == [
        "Intro one.",
        "Intro two, with `code`.",
        "| row | one |",
        "**Bullet**: first sentence.",
        "`second` sentence continues here.",
        "A comment.",
        "Its second sentence.",
        "Another group.",
        "pgnotify run the daemon in the foreground",
    ]
