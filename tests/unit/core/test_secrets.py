"""Secrets are references in the plan and masked on every output path (unit level; the bed tests
prove it end to end with a real deployment)."""

from __future__ import annotations

import io

import pytest

from orchestrate.cli.console import Console, emit_json
from orchestrate.core import secrets
from orchestrate.errors import GateError


def test_resolve_registers_masks_and_reports_missing() -> None:
    values = secrets.resolve({"HF_TOKEN": "SRC_TOKEN"}, {"SRC_TOKEN": "hf_unit_canary_123"})
    assert values == {"HF_TOKEN": "hf_unit_canary_123"}
    assert secrets.masker("token=hf_unit_canary_123!") == f"token={secrets.MASK}!"
    with pytest.raises(secrets.MissingSecretError) as err:
        secrets.resolve({"X": "NOT_SET_ANYWHERE_42"}, {})
    # one line for people and exit 2, straight from the core (no re-wrapping above it)
    assert err.value.exit_code == 2 and "NOT_SET_ANYWHERE_42" in err.value.lines()[0]
    assert err.value.hint and "export" in err.value.hint


def test_errors_events_and_json_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    secrets.masker.add("sk-unit-canary-999")
    stream = io.StringIO()
    console = Console(stream=stream)
    console("serve", "h1", "Authorization: Bearer sk-unit-canary-999")
    exc = GateError("vLLM died", tail="args: --api-key sk-unit-canary-999")
    console.error(exc.lines())
    emit_json({"key": "sk-unit-canary-999"})
    out = stream.getvalue() + capsys.readouterr().out
    assert "sk-unit-canary-999" not in out and out.count(secrets.MASK) == 3
