"""Class knowledge by zero-shot chain-of-thought prompting of an LLM (both papers).

For each class the prompts of one set (workflows/training/prompts.py) are asked in order in one
conversation (system message naming the class, then prompt 1, answer 1, prompt 2, ...), through
the official openai client (chat completions, temperature 0, top_p 1, timeout and retries set).
Any OpenAI-compatible server works (base_url). Every answer is cached on disk under a key
hashing model, prompt set, class and the whole conversation so far, so a rerun or a resumed run
never asks twice; a failure names the class and prompt and keeps the cached answers. The API key
comes from the caller or OPENAI_API_KEY and is never written anywhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import openai
from rich.console import Console

from instruments.utils import atomic_file
from workflows.training.knowledge import FORMAT, descriptions_hash
from workflows.training.prompts import PromptSet, system_message, user_message

ENV_BASE_URL = "MICAGENT_LLM_BASE_URL"
ENV_MODEL = "MICAGENT_LLM_MODEL"
ENV_KEY = "OPENAI_API_KEY"


class DescribeError(RuntimeError):
    """The LLM could not answer (names class and prompt), or it is not configured."""


@dataclass
class LLMSettings:
    model: str
    base_url: str | None
    api_key: str
    timeout: float = 120.0
    max_retries: int = 2

    def __repr__(self) -> str:  # never show the key
        return f"LLMSettings(model={self.model!r}, base_url={self.base_url!r})"


def llm_settings(model: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, timeout: float = 120.0,
                 max_retries: int = 2) -> LLMSettings:
    """Options, else MICAGENT_LLM_MODEL / MICAGENT_LLM_BASE_URL / OPENAI_API_KEY."""
    model = model or os.environ.get(ENV_MODEL)
    base_url = base_url or os.environ.get(ENV_BASE_URL) or None
    api_key = api_key or os.environ.get(ENV_KEY)
    if not model:
        raise DescribeError(f"no LLM model: pass --model or set {ENV_MODEL}")
    if not api_key:
        if base_url is None:
            raise DescribeError(f"no API key for the OpenAI API: set {ENV_KEY} (or pass "
                                f"--base-url of a compatible server that needs none)")
        api_key = "no-key"  # local OpenAI-compatible servers (vLLM, Ollama) accept any key
    return LLMSettings(model, base_url, api_key, timeout, max_retries)


class AnswerCache:
    """One JSON file per answer, written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(model: str, prompt_set: PromptSet, class_name: str, messages: list[dict]) -> str:
        payload = json.dumps([model, prompt_set.name, class_name, messages], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        path = self.folder / f"{key}.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())["answer"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, record: dict) -> None:
        atomic_file.write_text(self.folder / f"{key}.json",
                               json.dumps(record, ensure_ascii=False, indent=1))


def ask(client: openai.OpenAI, model: str, messages: list[dict]) -> str:
    """One chat completion at temperature 0, top_p 1; the answer text."""
    response = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                              top_p=1)
    text = response.choices[0].message.content if response.choices else None
    if not text or not text.strip():
        raise DescribeError("the LLM returned an empty answer")
    return text.strip()


def describe(class_names: list[str], prompt_set: PromptSet, settings: LLMSettings,
             out_path: str | Path, cache_dir: str | Path,
             console: Console | None = None) -> dict:
    """Ask every prompt for every class (cache first) and write the knowledge file."""
    console = console or Console(stderr=True)
    cache = AnswerCache(Path(cache_dir))
    client = openai.OpenAI(base_url=settings.base_url, api_key=settings.api_key,
                           timeout=settings.timeout, max_retries=settings.max_retries)
    classes, hits, asked = {}, 0, 0
    for name in class_names:
        messages = [{"role": "system", "content": system_message(prompt_set, name)}]
        answers = []
        for i, (title, _) in enumerate(prompt_set.prompts):
            messages.append({"role": "user", "content": user_message(prompt_set, i)})
            key = AnswerCache.key(settings.model, prompt_set, name, messages)
            answer = cache.get(key)
            cached = answer is not None
            if not cached:
                try:
                    answer = ask(client, settings.model, messages)
                except (openai.OpenAIError, DescribeError) as exc:
                    raise DescribeError(
                        f"class {name!r}, prompt {i + 1} ({title}) of set {prompt_set.name!r}: "
                        f"{type(exc).__name__}: {exc}. The {asked + hits} answers obtained so "
                        f"far are cached in {cache.folder}; run again to continue.") from exc
                cache.put(key, {"model": settings.model, "prompt_set": prompt_set.name,
                                "class": name, "prompt": i + 1, "answer": answer,
                                "created": dt.datetime.now(dt.UTC).isoformat()})
                asked += 1
            else:
                hits += 1
            messages.append({"role": "assistant", "content": answer})
            answers.append(answer)
            console.print(f"{name}: prompt {i + 1}/{len(prompt_set.prompts)} "
                          f"({'cached' if cached else 'asked'})")
        desc = "\n\n".join(f"{t}: {a}" for (t, _), a in
                           zip(prompt_set.prompts, answers, strict=True))
        classes[name] = {"answers": answers, "description": desc,
                         "answers_sha256": [hashlib.sha256(a.encode()).hexdigest()
                                            for a in answers],
                         "sha256": hashlib.sha256(desc.encode()).hexdigest()}
    host = urlparse(settings.base_url).netloc if settings.base_url else "api.openai.com"
    knowledge = {
        "format": FORMAT,
        "provenance": {
            "how": ("generated by `micagent describe`: zero-shot chain-of-thought prompting "
                    "through the OpenAI chat completions API, temperature 0, top_p 1"),
            "model": settings.model, "server": host,
            "prompt_set": prompt_set.name, "prompt_set_source": prompt_set.source,
            "prompt_set_sha256": prompt_set.sha256(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "temperature": 0, "top_p": 1, "answers_from_cache": hits, "answers_asked": asked,
        },
        "prompts": [{"title": t, "text": x} for t, x in prompt_set.prompts],
        "classes": classes,
        "sha256": descriptions_hash({k: v["description"] for k, v in classes.items()}),
    }
    atomic_file.write_text(out_path, json.dumps(knowledge, indent=1, ensure_ascii=False) + "\n")
    return knowledge
