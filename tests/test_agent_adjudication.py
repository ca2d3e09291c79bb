"""The few-shot VLM adjudicator against a local OpenAI-compatible HTTP server: good answers,
server errors, hangs, malformed and off-list answers, refusals; caching; the prompt."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from plumbing_model import untrained

from agent.adjudication.cache import AnswerCache
from agent.adjudication.demonstrations import BankError, DemonstrationBank
from agent.adjudication.offline import OfflineKnnAdjudicator
from agent.adjudication.openai_vlm import OpenAIAdjudicator, VlmConfig, VlmConfigError
from agent.adjudication.prompt import parse_answer
from twins.vlm_server import ChatHandler, serving, url

CLASSES = ["Fibres", "Particles", "Powder"]
USAGE = {"prompt_tokens": 100, "completion_tokens": 20}


class FakeVlm(ChatHandler):
    """Answers /v1/chat/completions according to the server's `mode` queue."""

    def do_POST(self):  # noqa: N802
        server = self.server
        server.requests.append({"body": self.read_json(),
                                "auth": self.headers.get("Authorization")})
        mode = server.modes.pop(0) if server.modes else server.default
        if mode == "500":
            return self.send_json(500, {"error": {"message": "boom"}})
        if mode == "429":
            return self.send_json(429, {"error": {"message": "slow down"}})
        if mode == "hang":
            server.released.wait(60)              # far past any timeout the tests set
            return self.send_chat('{"label": "Fibres", "confidence": 0.9}', **USAGE)
        content = {"good": '{"label": "Particles", "confidence": 0.8, "rationale": "round"}',
                   "fenced": '```json\n{"label": "powder", "confidence": 0.7,'
                             ' "rationale": "fine grains"}\n```',
                   "malformed": '{"label": "Particles", "confidence": ',
                   "unknown": '{"label": "Dragons", "confidence": 0.9, "rationale": "x"}',
                   "refusal": ""}[mode]
        return self.send_chat(content, **USAGE)


@pytest.fixture()
def vlm_server():
    with serving(FakeVlm, modes=[], default="good", requests=[],
                 released=threading.Event()) as server:
        yield server
        server.released.set()


@pytest.fixture()
def bank():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(9, 16)).astype(np.float32)
    images = rng.random((9, 32, 32)).astype(np.float32)
    return DemonstrationBank(images, [CLASSES[i % 3] for i in range(9)], emb)


def make(server, tmp_path, timeout=1.0) -> OpenAIAdjudicator:
    config = VlmConfig(base_url=url(server), model="test-vlm",
                       timeout_s=timeout)
    return OpenAIAdjudicator(config, AnswerCache(tmp_path / "cache"), api_key="sk-test-secret")


def ask(adjudicator, bank, seed=1):
    frame = np.random.default_rng(seed).random((64, 64)).astype(np.float32)
    demos = bank.select(bank.embeddings[0], k=3)
    return adjudicator.adjudicate(frame, demos, CLASSES, embedding=bank.embeddings[0])


def test_good_answer_is_used_with_demonstrations_in_the_prompt(vlm_server, bank, tmp_path):
    verdict = ask(make(vlm_server, tmp_path), bank)
    assert verdict.adjudicator == "openai:test-vlm" and verdict.error is None
    assert verdict.answer.label == "Particles" and verdict.answer.confidence == 0.8
    assert verdict.tokens == 120 and len(verdict.demonstrations) == 3
    request = vlm_server.requests[0]
    parts = request["body"]["messages"][1]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 4 and images[-1]["image_url"]["url"].startswith(
        "data:image/png;base64,")
    assert all(c in parts[0]["text"] for c in CLASSES)
    assert request["auth"] == "Bearer sk-test-secret"
    assert "sk-test-secret" not in json.dumps(verdict.as_record())


def test_answers_are_cached_by_image_demonstrations_model_and_prompt(vlm_server, bank,
                                                                       tmp_path):
    adjudicator = make(vlm_server, tmp_path)
    first, second = ask(adjudicator, bank), ask(adjudicator, bank)
    assert len(vlm_server.requests) == 1
    assert second.cached and second.answer == first.answer
    assert second.prompt_hash == first.prompt_hash
    ask(adjudicator, bank, seed=2)                      # another image: asked again
    assert len(vlm_server.requests) == 2


@pytest.mark.parametrize("failure", ["500", "429", "malformed", "unknown", "refusal"])
def test_one_failure_is_retried_once(vlm_server, bank, tmp_path, failure):
    vlm_server.modes = [failure, "good"]
    verdict = ask(make(vlm_server, tmp_path), bank)
    assert verdict.adjudicator == "openai:test-vlm" and verdict.answer.label == "Particles"
    assert len(vlm_server.requests) == 2 and len(verdict.attempts) == 1


@pytest.mark.parametrize("failure,why", [("500", "HTTP 500"), ("malformed", "malformed JSON"),
                                         ("unknown", "not one of the allowed labels"),
                                         ("refusal", "empty answer")])
def test_two_failures_fall_back_to_the_offline_adjudicator(vlm_server, bank, tmp_path,
                                                           failure, why):
    vlm_server.default = failure
    verdict = ask(make(vlm_server, tmp_path), bank)
    assert len(vlm_server.requests) == 2
    assert verdict.adjudicator == "offline-knn" and verdict.answer.label in CLASSES
    assert "openai:test-vlm failed" in verdict.error and why in verdict.error


def test_a_hanging_server_times_out_then_falls_back(vlm_server, bank, tmp_path):
    vlm_server.default = "hang"
    verdict = ask(make(vlm_server, tmp_path, timeout=0.5), bank)
    assert verdict.adjudicator == "offline-knn" and "timeout after 0.5 s" in verdict.error
    assert len(vlm_server.requests) == 2          # both attempts hung, both were given up


def test_parse_answer_accepts_fenced_json_and_normalises_label_case():
    answer = parse_answer('```json\n{"label": "powder", "confidence": 0.7}\n```', CLASSES)
    assert answer.label == "Powder"
    with pytest.raises(ValueError, match="outside"):
        parse_answer('{"label": "Powder", "confidence": 7}', CLASSES)


def test_offline_adjudicator_votes_for_the_most_similar_demonstrations(bank):
    target = bank.embeddings[4]                         # a "Particles" demonstration
    demos = bank.select(target, k=3)
    assert demos[0].id == bank.ids[4]
    verdict = OfflineKnnAdjudicator().adjudicate(np.zeros((8, 8)), demos, CLASSES, target)
    assert verdict.answer.label == "Particles" and verdict.adjudicator == "offline-knn"


def test_random_demonstrations_differ_from_similar_ones(bank):
    similar = [d.id for d in bank.select(bank.embeddings[0], 4)]
    random = [d.id for d in bank.select(bank.embeddings[0], 4, "random",
                                        np.random.default_rng(3))]
    assert len(set(random)) == 4 and random != similar


def test_bank_rejects_labels_the_model_does_not_know(bank):
    with pytest.raises(BankError, match="not classes"):
        bank.check_classes(["Fibres", "Particles"])


def test_openai_adjudicator_needs_a_model_name(monkeypatch):
    monkeypatch.delenv("MICAGENT_VLM_MODEL", raising=False)
    with pytest.raises(VlmConfigError, match="MICAGENT_VLM_MODEL"):
        VlmConfig.from_env()


def test_a_session_adjudicates_through_the_endpoint_and_never_stores_the_key(
        vlm_server, tmp_path, monkeypatch):
    import uuid

    from agent.config import RunConfig, checkpoint_path
    from agent.session import Session, SessionParts
    from instruments.devices.safety import GuardedMicroscope, SafetyEnvelope
    from instruments.session_file.reader import SessionReader
    from twins.classes import SEM_CLASSES
    from twins.microscope import TwinMicroscope

    secret = "sk-never-store-" + uuid.uuid4().hex
    monkeypatch.setenv("MICAGENT_VLM_BASE_URL", url(vlm_server))
    monkeypatch.setenv("MICAGENT_VLM_MODEL", "test-vlm")
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    classifier = untrained(SEM_CLASSES)
    twin = TwinMicroscope(seed=0)
    centres = twin.specimen.survey_centres(20e-6)[:2]
    images = []
    for c in centres:
        twin.move_stage(c)
        images.append(twin.acquire().image)
    demo_bank = DemonstrationBank(np.stack(images), ["Particles", "Powder"],
                                  classifier.embed(images))
    config = RunConfig(session_id=str(uuid.uuid4()), out=str(tmp_path / "s.h5"), frames=2,
                       state_dir=str(tmp_path / "state"), adjudicator="openai",
                       confidence=1.01, max_rescans=0, demo_k=2,
                       imaging={"fov": 20e-6, "pixels": 128, "dwell": 2e-6})
    parts = SessionParts(GuardedMicroscope(twin, SafetyEnvelope()), classifier, demo_bank,
                         survey_positions=[{"x": c.x, "y": c.y, "row": 0, "col": i}
                                           for i, c in enumerate(centres)])
    session = Session(config, parts)
    final = session.run()
    session.close()
    with SessionReader(config.out) as reader:
        records, provenance = reader.records(), reader.provenance
    assert final["used"]["adjudications"] == 2 and final["used"]["tokens"] == 240
    for record in records:
        assert record.adjudication.adjudicator == "openai:test-vlm"
        assert record.adjudication.answer.label == "Particles"
        assert record.adjudication.reclassified.lmm_label == "Particles"
    assert provenance["adjudicator"] == "openai:test-vlm"
    for path in [Path(config.out), checkpoint_path(config.out),
                 *Path(config.state_dir).rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
