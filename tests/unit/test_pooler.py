"""The pool mode a DSN declares, and what each mode lets a connection do (db/pooler.py)."""

from __future__ import annotations

import psycopg
import pytest

import delta_actors as delta
from delta_actors.db.connection import check_dsn, component_conninfo
from delta_actors.db.pooler import PoolMode, listen_dsn_of, target, with_pool_mode

URL = "postgresql://app:s3cret@db:6432/app"


@pytest.mark.parametrize(
    ("dsn", "conninfo", "mode"),
    [
        (URL, URL, PoolMode.SESSION),
        (f"{URL}?delta_pool_mode=transaction", URL, PoolMode.TRANSACTION),
        (f"{URL}?sslmode=disable&delta_pool_mode=transaction&connect_timeout=3",
         f"{URL}?sslmode=disable&connect_timeout=3", PoolMode.TRANSACTION),
        (f"{URL}?delta_pool_mode=session", URL, PoolMode.SESSION),
        ("host=/run/pg dbname=app delta_pool_mode=transaction", "host=/run/pg dbname=app",
         PoolMode.TRANSACTION),
        ("delta_pool_mode = 'transaction' host=db", "host=db", PoolMode.TRANSACTION),
        ("host=db dbname=app", "host=db dbname=app", PoolMode.SESSION),
    ],
)  # fmt: skip
def test_the_pool_mode_is_read_from_the_dsn_and_removed_before_libpq_sees_it(dsn, conninfo, mode):
    given = target(dsn)
    assert (given.conninfo, given.pool_mode) == (conninfo, mode)
    psycopg.conninfo.conninfo_to_dict(given.conninfo)  # libpq takes what is left
    check_dsn(dsn)
    assert "delta_pool_mode" not in component_conninfo(dsn, "delta-test")


def test_only_transaction_mode_turns_prepares_off():
    assert target(URL).connect_kwargs == {}
    assert target(f"{URL}?delta_pool_mode=transaction").connect_kwargs == {
        "prepare_threshold": None
    }
    assert target(URL).keeps_sessions
    assert not target(f"{URL}?delta_pool_mode=transaction").keeps_sessions


def test_an_unknown_pool_mode_is_refused_naming_the_modes_and_no_password():
    with pytest.raises(delta.ConfigError, match="use one of session, transaction") as refused:
        target(f"{URL}?delta_pool_mode=statement")
    assert "s3cret" not in str(refused.value)
    with pytest.raises(delta.ConfigError, match="--pool-mode 'stmt' is not a pool mode"):
        with_pool_mode(URL, "stmt")


def test_pool_mode_option_replaces_what_the_dsn_declared():
    declared = with_pool_mode(f"{URL}?delta_pool_mode=session", "transaction")
    assert target(declared) == target(f"{URL}?delta_pool_mode=transaction")
    assert target(with_pool_mode("host=db", PoolMode.TRANSACTION)).pool_mode == "transaction"
    assert target(with_pool_mode(f"{URL}?sslmode=disable", "transaction")).conninfo == (
        f"{URL}?sslmode=disable"
    )


def test_listen_happens_on_a_session_and_never_behind_a_transaction_pooler():
    pooled = f"{URL}?delta_pool_mode=transaction"
    assert listen_dsn_of(URL, None) == URL
    assert listen_dsn_of(pooled, None) is None
    assert listen_dsn_of(pooled, "host=db") == "host=db"
    with pytest.raises(delta.ConfigError, match="LISTEN needs a session of its own"):
        listen_dsn_of(pooled, pooled)
