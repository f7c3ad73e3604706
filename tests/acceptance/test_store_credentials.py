"""Where the CLI takes its store URL from, and that a password never shows.

``--store``, ``--store-file``, ``$ARBITER_STORE``, ``$ARBITER_STORE_FILE`` (in that order),
and libpq's ``PG*`` variables for what a postgres URL leaves out. The in-process tests call
``supervisor.cli.main``; the postgres ones skip when PostgreSQL is unreachable (and fail
under ``CI``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from actors.journal import resolve_store_url
from supervisor.cli import main
from tests.integration.test_journal_contract import postgres_schema

DEFAULT = "sqlite:///default.db"


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--log-format", "json", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("ARBITER_STORE", "ARBITER_STORE_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- resolve_store_url ------------------------------------------------------------------------
def test_the_sources_in_order(tmp_path: Path) -> None:
    given = tmp_path / "given.url"
    given.write_text("sqlite:///from-flag-file.db\nsecond line ignored\n")
    mounted = tmp_path / "mounted.url"
    mounted.write_text("  sqlite:///from-env-file.db  \n")
    env = {"ARBITER_STORE": "sqlite:///from-env.db", "ARBITER_STORE_FILE": str(mounted)}

    assert resolve_store_url("memory://", str(given), default=DEFAULT, environ=env) == "memory://"
    assert (
        resolve_store_url(None, str(given), default=DEFAULT, environ=env)
        == "sqlite:///from-flag-file.db"
    )
    assert resolve_store_url(None, None, default=DEFAULT, environ=env) == "sqlite:///from-env.db"
    only_file = {"ARBITER_STORE_FILE": str(mounted)}
    assert (
        resolve_store_url(None, None, default=DEFAULT, environ=only_file)
        == "sqlite:///from-env-file.db"
    )
    assert resolve_store_url(None, None, default=DEFAULT, environ={}) == DEFAULT
    empty = {"ARBITER_STORE": "", "ARBITER_STORE_FILE": ""}
    assert resolve_store_url(None, None, default=DEFAULT, environ=empty) == DEFAULT


def test_a_bad_file_is_an_error_naming_the_file_not_its_content(tmp_path: Path) -> None:
    missing = tmp_path / "missing.url"
    with pytest.raises(ValueError, match=r"cannot read the store URL from --store-file .*missing"):
        resolve_store_url(None, str(missing), default=DEFAULT, environ={})
    blank = tmp_path / "blank.url"
    blank.write_text("\n" + "postgresql://u:hunter2@h/db\n")
    with pytest.raises(ValueError, match="holds no store URL") as caught:
        resolve_store_url(None, None, default=DEFAULT, environ={"ARBITER_STORE_FILE": str(blank)})
    assert "hunter2" not in str(caught.value)
    assert "$ARBITER_STORE_FILE" in str(caught.value)
    binary = tmp_path / "binary.url"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="UnicodeDecodeError"):
        resolve_store_url(None, str(binary), default=DEFAULT, environ={})


# -- the CLI ----------------------------------------------------------------------------------
def test_the_cli_takes_the_store_from_the_environment(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ARBITER_STORE", "sqlite:///env.db")
    code, _, err = _main(capsys, "submit", "--type", "t")
    assert code == 0, err
    assert (clean_env / "env.db").exists()
    assert not (clean_env / "arbiter.db").exists()
    code, out, _ = _main(capsys, "status", "--json")
    assert json.loads(out)["counts"]["queued"] == 1


def test_the_cli_takes_the_store_from_a_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url_file = clean_env / "store.url"
    url_file.write_text("sqlite:///from-file.db\n")
    code, _, err = _main(capsys, "submit", "--store-file", str(url_file), "--type", "t")
    assert code == 0, err
    monkeypatch.setenv("ARBITER_STORE_FILE", str(url_file))
    code, out, _ = _main(capsys, "status", "--json")
    assert json.loads(out)["counts"]["queued"] == 1
    assert json.loads(out)["store"].endswith("from-file.db")


def test_store_and_store_file_are_exclusive(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["status", "--store", "memory://", "--store-file", "x"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_an_unreadable_store_file_is_a_one_line_error(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _main(capsys, "status", "--store-file", str(clean_env / "nope"))
    assert code == 2
    assert out == ""
    assert err.startswith("arbiter status: error: cannot read the store URL from --store-file")


# -- PG* variables ----------------------------------------------------------------------------
@pytest.mark.postgres
def test_a_postgres_url_without_host_or_password_uses_the_pg_variables(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "pg-env-s3cret"
    with postgres_schema() as (schema, _):
        for name, value in {
            "PGHOST": "127.0.0.1",
            "PGPORT": "5432",
            "PGDATABASE": "test",
            "PGUSER": os.environ.get("PGUSER", "root"),
            "PGPASSWORD": secret,  # trust auth ignores it; it must not show anyway
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("ARBITER_STORE", f"postgresql:///?schema={schema}")
        code, _, err = _main(capsys, "submit", "--type", "t", "--json")
        assert code == 0, err
        code, out, err = _main(capsys, "status", "--json")
        assert code == 0, err
        status = json.loads(out)
        assert status["counts"]["queued"] == 1
        assert secret not in out + err
        # A failure names the store, never the password from the environment.
        monkeypatch.setenv("PGPORT", "1")
        code, out, err = _main(capsys, "status")
        assert code == 2
        assert "error:" in err
        assert secret not in out + err


def test_a_worker_waits_for_the_store_then_fails_clearly(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on port 1: the worker tries with backoff for --store-wait, then
    exits 2 saying how long it tried (a password in the URL is not shown)."""
    url = "postgresql://u:pw-s3cret@127.0.0.1:1/test?connect_timeout=1"
    handler = "t=tests.acceptance.crash_handlers:append_id"
    code, out, err = _main(
        capsys, "worker", "--store", url, "--store-wait", "0.5", "--handler", handler
    )
    assert code == 2
    assert out == ""
    assert "arbiter worker: error: cannot open store" in err
    assert "tried" in err
    assert "pw-s3cret" not in err
