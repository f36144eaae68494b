"""Who may connect when no key is set (issue 7): loopback by default, refuse the network unless told."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import InvalidInput
from service import cli
from service.auth import check_binding, is_loopback
from service.settings import load_settings


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "::ffff:127.0.0.1", "localhost",
                                  "LOCALHOST"])
def test_loopback_hosts_are_recognised(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "::ffff:10.0.0.5", "10.0.0.5", "192.168.1.1", "example.org", ""])
def test_other_hosts_are_not_loopback(host):
    assert not is_loopback(host)


def test_no_key_on_loopback_starts_and_says_it_is_unauthenticated_loopback():
    line = check_binding(load_settings({}, environ={}))
    assert "no API key" in line and "127.0.0.1" in line


def test_no_key_on_a_public_host_is_refused_with_the_ways_out():
    with pytest.raises(InvalidInput) as err:
        check_binding(load_settings({"host": "0.0.0.0"}, environ={}))
    assert err.value.field == "host"
    for hint in ("LOGITSEARCH_API_KEY", "127.0.0.1", "LOGITSEARCH_ALLOW_UNAUTHENTICATED", "--allow-unauthenticated"):
        assert hint in err.value.reason


def test_the_override_from_the_environment_starts_with_a_warning():
    settings = load_settings({"host": "0.0.0.0"}, environ={"LOGITSEARCH_ALLOW_UNAUTHENTICATED": "1"})
    assert settings.allow_unauthenticated and "WARNING" in check_binding(settings)


def test_a_key_allows_a_public_host_and_the_line_never_shows_the_key():
    secret = "s3cret-write-key-0123456789"
    settings = load_settings({"host": "0.0.0.0"}, environ={"LOGITSEARCH_API_KEY": secret,
                                                           "LOGITSEARCH_READ_API_KEY": "another-read-key"})
    line = check_binding(settings)
    assert "read-write and read-only" in line and secret not in line and "another-read-key" not in line


def test_the_same_key_for_both_roles_is_refused():
    with pytest.raises(InvalidInput) as err:
        check_binding(load_settings({}, environ={"LOGITSEARCH_API_KEY": "k" * 20, "LOGITSEARCH_READ_API_KEY": "k" * 20}))
    assert err.value.field == "read_api_key"


def test_serve_refuses_a_public_host_without_a_key_before_binding(monkeypatch, capsys):
    for var in ("LOGITSEARCH_API_KEY", "LOGITSEARCH_READ_API_KEY", "LOGITSEARCH_ALLOW_UNAUTHENTICATED"):
        monkeypatch.delenv(var, raising=False)

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("uvicorn.run was called")

    monkeypatch.setattr("uvicorn.run", must_not_run)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "6399"]) == 2
    assert "refusing to serve 0.0.0.0 without an API key" in capsys.readouterr().err


def _no_uvicorn(monkeypatch) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("uvicorn.run was called")

    monkeypatch.setattr("uvicorn.run", must_not_run)
    for var in ("LOGITSEARCH_API_KEY", "LOGITSEARCH_READ_API_KEY", "LOGITSEARCH_ALLOW_UNAUTHENTICATED"):
        monkeypatch.delenv(var, raising=False)


def test_serve_refuses_a_read_only_data_dir_with_the_reason(monkeypatch, capsys, tmp_path):
    # os.access is what reports a read-only mount (EROFS, even for root); a test cannot mount one,
    # so it answers "not writable" for this one directory.
    data = tmp_path / "data"
    data.mkdir()
    real_access = os.access
    monkeypatch.setattr("service.store.os.access",
                        lambda p, mode: False if Path(p) == data and mode & os.W_OK else real_access(p, mode))
    _no_uvicorn(monkeypatch)
    assert cli.main(["serve", "--data-dir", str(data), "--port", "6399"]) == 2
    err = capsys.readouterr().err
    assert f"the data directory {data} is read-only" in err and "Traceback" not in err
    assert list(data.iterdir()) == []  # nothing was created


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_serve_refuses_a_directory_without_write_permission(monkeypatch, capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o555)
    _no_uvicorn(monkeypatch)
    assert cli.main(["serve", "--data-dir", str(data), "--port", "6399"]) == 2
    assert "read-only (or not writable by this user)" in capsys.readouterr().err


def test_serve_refuses_a_data_dir_that_cannot_be_created(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _no_uvicorn(monkeypatch)
    assert cli.main(["serve", "--data-dir", str(blocker / "data"), "--port", "6399"]) == 2
    assert f"cannot create the data directory {blocker / 'data'}" in capsys.readouterr().err
