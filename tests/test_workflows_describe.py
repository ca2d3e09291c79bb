"""`describe` against a local OpenAI-compatible test server: the papers' prompts at temperature
0 / top-p 1, answers cached (second run asks nothing), failures name class and prompt and keep
the cache, a hanging endpoint times out, and the API key is never written."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from twins.vlm_server import ChatHandler, serving, url
from workflows.cli.app import app
from workflows.training.describe import DescribeError, describe, llm_settings
from workflows.training.knowledge import load_knowledge
from workflows.training.prompts import DEFECT, NANOMATERIAL, get_prompt_set

SECRET = "sk-test-never-write-me"


class DescribeLLM(ChatHandler):
    """Answers each prompt with its class and number; fails or hangs where the server says."""

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        server, body = self.server, self.read_json()
        body["_auth"] = self.headers.get("Authorization")
        server.requests.append(body)
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        prompt_no = int(user.split(":")[0].split()[-1])
        klass = system.split("under discussion is: ")[1].split(". Answer")[0]
        if server.hang_on == (klass, prompt_no):
            server.released.wait(60)              # far past any timeout the tests set
        if server.fail_on == (klass, prompt_no):
            self.send_json(500, {"error": {"message": "model overloaded"}})
            return
        self.send_chat(f"{klass} answer to prompt {prompt_no} after {len(body['messages'])} msgs",
                       model=body["model"])


@pytest.fixture
def llm():
    """Chat-completions server on 127.0.0.1; `fail_on` / `hang_on` (class, prompt number)."""
    with serving(DescribeLLM, requests=[], fail_on=None, hang_on=None,
                 released=threading.Event()) as server:
        server.url = url(server)
        yield server
        server.released.set()


def _files_text(folder: Path) -> str:
    return "".join(p.read_text() for p in folder.rglob("*") if p.is_file())


def test_describe_asks_each_prompt_once_and_the_second_run_hits_the_cache(llm, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    out, cache = tmp_path / "k.json", tmp_path / "cache"
    args = ["describe", "--classes", "Nanowires,Powder", "--out", str(out), "--model", "m1",
            "--base-url", llm.url, "--cache", str(cache)]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    n = 2 * len(NANOMATERIAL.prompts)
    assert len(llm.requests) == n
    first = llm.requests[0]
    assert first["temperature"] == 0 and first["top_p"] == 1 and first["model"] == "m1"
    assert first["_auth"] == f"Bearer {SECRET}"
    assert "Prompt 1: Introduction" in first["messages"][-1]["content"]
    assert len(llm.requests[1]["messages"]) == 4  # the chain: system, p1, a1, p2
    knowledge = load_knowledge(out)
    assert knowledge.descriptions["Nanowires"].startswith("Introduction: Nanowires answer")
    data = json.loads(out.read_text())
    assert data["provenance"]["model"] == "m1" and data["provenance"]["temperature"] == 0
    assert data["provenance"]["prompt_set_sha256"] == NANOMATERIAL.sha256()
    assert len(data["prompts"]) == len(NANOMATERIAL.prompts) and data["provenance"]["date"]

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(llm.requests) == n  # nothing asked again
    assert json.loads(out.read_text())["provenance"]["answers_from_cache"] == n
    assert load_knowledge(out).descriptions == knowledge.descriptions
    assert SECRET not in _files_text(tmp_path)


def test_a_failure_names_class_and_prompt_and_keeps_the_cached_answers(llm, tmp_path):
    llm.fail_on = ("Powder", 3)
    settings = llm_settings("m1", llm.url, api_key=SECRET, timeout=5, max_retries=0)
    cache = tmp_path / "cache"
    with pytest.raises(DescribeError) as err:
        describe(["Nanowires", "Powder"], NANOMATERIAL, settings, tmp_path / "k.json", cache)
    message = str(err.value)
    assert "'Powder'" in message and "prompt 3 (Synthesis Methods)" in message
    assert not (tmp_path / "k.json").exists()
    assert len(list(cache.glob("*.json"))) == len(NANOMATERIAL.prompts) + 2
    llm.fail_on = None
    asked_before = len(llm.requests)
    describe(["Nanowires", "Powder"], NANOMATERIAL, settings, tmp_path / "k.json", cache)
    assert len(llm.requests) - asked_before == len(NANOMATERIAL.prompts) - 2


def test_a_hanging_endpoint_times_out_with_a_clear_error(llm, tmp_path):
    llm.hang_on = ("Crazing", 1)
    settings = llm_settings("m1", llm.url, api_key=SECRET, timeout=0.5, max_retries=0)
    with pytest.raises(DescribeError, match=r"class 'Crazing', prompt 1 \(Overview\) .*"
                                            r"APITimeoutError"):
        describe(["Crazing"], DEFECT, settings, tmp_path / "k.json", tmp_path / "cache")
    assert len(llm.requests) == 1                 # asked once (no retry), gave up at 0.5 s


def test_settings_come_from_the_environment_and_a_missing_model_is_refused(monkeypatch):
    monkeypatch.setenv("MICAGENT_LLM_MODEL", "env-model")
    monkeypatch.setenv("MICAGENT_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = llm_settings()
    assert settings.model == "env-model" and settings.base_url.endswith(":9/v1")
    assert SECRET not in repr(llm_settings(api_key=SECRET))
    monkeypatch.delenv("MICAGENT_LLM_MODEL")
    with pytest.raises(DescribeError, match="no LLM model"):
        llm_settings()
    with pytest.raises(ValueError, match="unknown prompt set"):
        get_prompt_set("poetry")


def test_every_prompt_set_of_the_papers_is_available():
    sizes = {name: len(get_prompt_set(name).prompts) for name in
             ("nanomaterial", "nanomaterial-cmemrl", "defect", "corrosion", "material")}
    assert sizes == {"nanomaterial": 8, "nanomaterial-cmemrl": 6, "defect": 8,
                     "corrosion": 10, "material": 10}


def test_the_bundled_sem_knowledge_covers_the_ten_classes_and_says_how_it_was_written():
    from twins.classes import SEM_CLASSES

    knowledge = load_knowledge()
    assert len(knowledge.for_classes(list(SEM_CLASSES))) == 10
    how = knowledge.provenance["how"]
    assert "AI model" in how and "NOT produced through `micagent describe`" in how
