"""The browser fixture's own rule (issue 13): without a usable chromium the browser tests skip locally with
a notice saying how to get one, and fail under CI, where .ci/run installs chromium and they are required.
These tests need no browser, so they run everywhere."""

from __future__ import annotations

import sys

import pytest

from tests.browser import conftest


def test_chromium_is_the_one_named_by_chromium_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("CHROMIUM", sys.executable)
    assert conftest.chromium_path() == sys.executable
    # A CHROMIUM that is not an executable is no browser: no silent fallback to another one.
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-such-chromium"))
    assert conftest.chromium_path() is None


def test_no_browser_skips_locally_with_the_notice(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        conftest._no_browser(conftest.NO_BROWSER)
    assert "apt-get install -y chromium" in str(skipped.value)


def test_no_browser_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        conftest._no_browser(conftest.NO_BROWSER)
    assert "required in CI" in str(failed.value)
