"""Every provider fixture is run by some test: a captured request nobody posts is dead weight.

A file under tests/fixtures/<provider>/ counts as used when a folder-wide, parametrized test runs it (the
Twilio CASES, the HubSpot BATCHES and their captured headers), or when a test module names it in a string
literal (its file name, or for a request body its name without the suffix, e.g. "voice__incoming").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.connectors.hubspot.test_webhooks import BATCHES
from tests.webhooks.test_twilio import CASES

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
PROVIDERS = ("twilio", "hubspot", "salesforce", "sendgrid", "mailgun")
# Fixture helpers (tests/signing.py, the provider test modules) name files without these suffixes.
BODY_SUFFIXES = (".form", ".json", ".xml", ".multipart", ".headers")


def run_by_folder_tests() -> set[Path]:
    """The fixtures the one-test-per-fixture modules parametrize over."""
    used = {FIXTURES / "twilio" / f"{name}.form" for name in CASES}
    used |= {FIXTURES / "hubspot" / f"{name}.json" for name in BATCHES}
    # test_captured_signature_is_what_our_signer_computes checks each batch's captured headers
    used |= {FIXTURES / "hubspot" / f"{name}.headers" for name in BATCHES}
    return {p for p in used if p.is_file()}


def string_literals() -> set[str]:
    """Every string constant in the test modules (not comments), this one excluded."""
    out: set[str] = set()
    for module in TESTS.rglob("*.py"):
        if module == Path(__file__):
            continue
        for node in ast.walk(ast.parse(module.read_text(), filename=str(module))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.add(node.value)
    return out


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_fixture_is_used_by_a_test(provider: str) -> None:
    folder = FIXTURES / provider
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert files, f"no fixtures in {folder}"
    used = run_by_folder_tests()
    literals = string_literals()
    dead = [
        str(p.relative_to(FIXTURES))
        for p in files
        if p not in used and p.name not in literals and not (p.suffix in BODY_SUFFIXES and p.stem in literals)
    ]
    assert not dead, f"fixtures no test runs (add a case for them or delete them): {dead}"
