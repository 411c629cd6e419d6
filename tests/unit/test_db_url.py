"""``db.as_url``: libpq keyword strings become URLs asyncpg reads, meaning the same thing."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgnotify.db import as_url, describe_dsn
from pgnotify.errors import DatabaseUnavailable


@pytest.mark.parametrize(
    "url", ["postgresql://u:p@h:5432/d?sslmode=require", "postgres://localhost/pgnotify"]
)
def test_a_url_is_left_as_it_is(url: str) -> None:
    assert as_url(url) == url


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db.internal port=6432 dbname=app user=daemon",
        "host=db.internal dbname=app user=daemon password='p@ss w/rd:#?'",
        "host=/var/run/postgresql dbname=app user=daemon",
        "host=db.internal dbname=app sslmode=verify-full application_name=x",
        "dbname=app",
    ],
)
def test_a_keyword_string_becomes_an_equivalent_url(dsn: str) -> None:
    url = as_url(dsn)
    assert url.startswith("postgresql://")
    assert conninfo_to_dict(url) == conninfo_to_dict(dsn)


def test_special_characters_in_the_password_are_escaped() -> None:
    url = as_url("host=h dbname=d user=me password='p@ss w/rd'")
    assert url == "postgresql://me:p%40ss%20w%2Frd@h/d"


def test_a_unix_socket_directory_travels_as_a_query_parameter() -> None:
    assert as_url("host=/run/pg dbname=d user=u") == "postgresql://u@/d?host=%2Frun%2Fpg"


def test_an_unparsable_string_is_a_one_line_database_error() -> None:
    with pytest.raises(DatabaseUnavailable, match="not a valid libpq URL"):
        as_url("host=h dbname='unterminated")


def test_describing_a_dsn_never_shows_the_password() -> None:
    described = describe_dsn("postgresql://daemon:hunter2@db.internal:6432/app")
    assert described == "daemon@db.internal:6432/app"
    assert "hunter2" not in describe_dsn("host=h user=u password=hunter2 dbname=d")
