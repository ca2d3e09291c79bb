"""No API key reaches a file or a log: a local OpenAI-compatible server (driven by the real
openai client) answers with text that echoes the request headers and the key JSON-escaped,
URL-encoded and base64-encoded, as answer, as rationale and as an error; the password in the
server's URL (`http://user:PASS@host/v1`) is never stored; the session file, the checkpoint
database, every cache and the log stay clean.
The adjudicator's timeout comes from --vlm-timeout, $MICAGENT_VLM_TIMEOUT or the run config."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from pathlib import Path
from urllib.parse import quote, quote_plus

import numpy as np
import pytest
from plumbing_model import untrained

from instruments.utils.redaction import install_log_redaction, redact, redact_bytes, redact_value
from twins.vlm_server import ChatHandler, serving, url

MODES = ["echo-text", "echo-rationale", "echo-text", "echo-text", "echo-error"]


class EchoingVlm(ChatHandler):
    """Quotes the request's headers back in whatever the next mode says."""

    def do_POST(self):  # noqa: N802
        self.read_json()
        echo = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        echo += " " + " ".join(encoded_forms(key))
        mode = self.server.modes.pop(0) if self.server.modes else "echo-text"
        if mode == "echo-error":
            return self.send_json(500, {"error": {"message": f"bad key {key}; you sent {echo}"}})
        content = (f"key={key} is what you sent, with:\n{echo}"
                   if mode == "echo-text" else
                   json.dumps({"label": "Particles", "confidence": 0.8,
                               "rationale": f"round; by the way {echo} {key}"}))
        self.send_chat(content)


def encoded_forms(secret: str) -> list[str]:
    """What an endpoint may echo: JSON-escaped (with `\\/`), URL-encoded, base64 (alone and
    inside a longer base64 text)."""
    return [json.dumps(secret).replace("/", "\\/"), quote(secret, safe=""),
            quote_plus(secret), base64.b64encode(secret.encode()).decode(),
            base64.b64encode(b"k=" + secret.encode()).decode()]


@pytest.fixture()
def echo_server():
    with serving(EchoingVlm, modes=list(MODES)) as server:
        yield server


@pytest.fixture()
def log_file(tmp_path: Path):
    """Every log record of the run (openai and httpx at DEBUG included) into a file."""
    install_log_redaction()
    path = tmp_path / "run.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield path
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()


def test_echoed_keys_reach_no_file_and_no_log(echo_server, tmp_path, monkeypatch, log_file):

    from agent.adjudication.demonstrations import DemonstrationBank
    from agent.config import RunConfig, checkpoint_path
    from agent.session import Session, SessionParts
    from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
    from instruments.session_file.reader import SessionReader
    from twins.classes import SEM_CLASSES
    from twins.microscope import TwinMicroscope

    secret = f"k/{uuid.uuid4().hex}+{uuid.uuid4().hex}/"    # no sk- prefix: env only
    password = "pw" + uuid.uuid4().hex
    monkeypatch.setenv("MICAGENT_VLM_BASE_URL",
                       url(echo_server).replace("://", f"://operator:{password}@"))
    monkeypatch.setenv("MICAGENT_VLM_MODEL", "echo-vlm")
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    classifier = untrained(SEM_CLASSES)
    twin = TwinMicroscope(seed=0)
    centres = twin.specimen.survey_centres(20e-6)[:3]
    images = []
    for c in centres:
        twin.move_stage(c)
        images.append(twin.acquire().image)
    bank = DemonstrationBank(np.stack(images), ["Particles", "Powder", "Tips"],
                             classifier.embed(images))
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"), frames=3,
                       state_dir=str(tmp_path / "state"), adjudicator="openai",
                       confidence=1.01, max_rescans=0, demo_k=2, vlm_timeout_s=5.0,
                       imaging={"fov": 20e-6, "pixels": 96, "dwell": 2e-6})
    parts = SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier, bank,
                         survey_positions=[{"x": c.x, "y": c.y, "row": 0, "col": i}
                                           for i, c in enumerate(centres)])
    session = Session(config, parts)
    final = session.run()
    session.close()
    assert final["used"]["adjudications"] == 3 and not echo_server.modes  # every mode served
    with SessionReader(config.out) as reader:
        records = reader.records()
    verdicts = [r.adjudication for r in records]
    assert any(v.error and "[redacted]" in v.error for v in verdicts)        # quoted, masked
    assert any(v.answer and "[redacted]" in v.answer.rationale for v in verdicts)
    files = [Path(config.out), checkpoint_path(config.out), log_file,
             *Path(config.out).parent.glob("*-wal"), *Path(config.state_dir).rglob("*")]
    assert checkpoint_path(config.out).stat().st_size > 0
    with SessionReader(config.out) as reader:
        assert reader.provenance["vlm_base_url"] == url(echo_server)
    forms = [secret, secret[:24], password, *encoded_forms(secret)]
    forms.append(base64.b64encode(b"k=" + secret.encode()).decode()[4:40])  # mid-text
    for path in files:
        if path.is_file():
            data = path.read_bytes()
            for form in forms:
                assert form.encode() not in data, (path, form)


def test_the_filter_masks_keys_authorization_values_and_sk_tokens(monkeypatch) -> None:
    monkeypatch.setenv("MY_SERVICE_API_KEY", "plain-value-123456")
    text = ("Authorization: Bearer abc.def-ghi123 and authorization=xyz123456 "
            "sk-proj-AbCdEf0123456789 plain-value-123456 short sk-1")
    masked = redact(text)
    for leaked in ("abc.def-ghi123", "xyz123456", "AbCdEf0123456789", "plain-value-123456"):
        assert leaked not in masked
    assert masked.endswith("short sk-1")
    assert redact("Authorization: Bearer plain-value-123456") == "Authorization: Bearer [redacted]"
    assert redact_value({"a": ["Bearer tok_0123456789"], "n": 3}) == {"a": ["Bearer [redacted]"],
                                                                     "n": 3}
    assert json.loads(redact('{"authorization": null, "Authorization": 12}')) == {
        "authorization": None, "Authorization": 12}
    assert redact_bytes(b"\xa5xplain-value-123456\x01") == b"\xa5x" + b"*" * 18 + b"\x01"


def test_a_secret_of_the_shortest_length_is_masked_and_shorter_text_passes(monkeypatch) -> None:
    monkeypatch.setenv("SHORT_TOKEN", "8chars!!")               # MIN_SECRET characters
    assert redact("8chars!!") == "[redacted]"
    assert redact_value({"8chars!!": ["8chars!!", "8chars!"]}) == {
        "[redacted]": ["[redacted]", "8chars!"]}


@pytest.mark.parametrize("given,env,expected", [(None, None, 30.0), (None, "7.5", 7.5),
                                                (2.0, "7.5", 2.0)])
def test_the_vlm_timeout_comes_from_the_option_the_env_or_30_s(given, env, expected,
                                                               monkeypatch) -> None:
    from workflows.cli.cmd_run import _vlm_timeout
    if env is None:
        monkeypatch.delenv("MICAGENT_VLM_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("MICAGENT_VLM_TIMEOUT", env)
    assert _vlm_timeout(given) == expected


def test_a_bad_vlm_timeout_is_a_clear_error(monkeypatch) -> None:
    from agent.config import RunConfig, RunConfigError
    from workflows.cli.cmd_run import _vlm_timeout
    monkeypatch.setenv("MICAGENT_VLM_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MICAGENT_VLM_TIMEOUT"):
        _vlm_timeout(None)
    with pytest.raises(RunConfigError, match="positive"):
        RunConfig(session_id="x", vlm_timeout_s=0)
