"""Few-shot VLM adjudication through the official openai client (OpenAI, vLLM, Ollama, ...).

One bounded retry on any failure (timeout, 429/5xx, malformed JSON, unknown label, refusal),
then the offline adjudicator answers and the verdict says why. The API key is passed to the
client only; it is never logged, hashed or written, and the server's text (answers, errors)
passes the redaction filter before it is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from agent.adjudication.base import AnswerError, Demonstration, Verdict
from agent.adjudication.cache import AnswerCache
from agent.adjudication.offline import OfflineKnnAdjudicator
from agent.adjudication.prompt import build_messages, parse_answer, prompt_hash
from instruments.utils.redaction import redact, register_secret, strip_userinfo


class VlmConfigError(ValueError):
    """The VLM endpoint is not configured."""


@dataclass(frozen=True)
class VlmConfig:
    base_url: str | None
    model: str
    timeout_s: float = 30.0
    attempts: int = 2           # the first try plus one bounded retry
    max_tokens: int = 300

    @classmethod
    def from_env(cls, timeout_s: float = 30.0) -> VlmConfig:
        model = os.environ.get("MICAGENT_VLM_MODEL")
        if not model:
            raise VlmConfigError("set MICAGENT_VLM_MODEL (and MICAGENT_VLM_BASE_URL for a "
                                 "compatible server, OPENAI_API_KEY for OpenAI) to use "
                                 "--adjudicator openai")
        base_url = os.environ.get("MICAGENT_VLM_BASE_URL") or None
        strip_userinfo(base_url)        # its password, if any, is redacted from here on
        return cls(base_url=base_url, model=model,
                   timeout_s=timeout_s)


class OpenAIAdjudicator:
    def __init__(self, config: VlmConfig, cache: AnswerCache,
                 fallback: OfflineKnnAdjudicator | None = None,
                 api_key: str | None = None) -> None:
        self.config = config
        self.name = f"openai:{config.model}"
        self.cache = cache
        self.fallback = fallback or OfflineKnnAdjudicator()
        key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        register_secret(key)                 # redacted wherever it could be quoted back
        import openai  # here, not at the top: 1.3 s of every start, used only with a VLM

        self.client = openai.OpenAI(base_url=config.base_url, api_key=key,
                                    timeout=config.timeout_s, max_retries=0)

    def adjudicate(self, image: np.ndarray, demonstrations: list[Demonstration],
                   class_names: list[str], embedding: np.ndarray | None = None) -> Verdict:
        import openai

        ids = [d.id for d in demonstrations]
        key = prompt_hash(image, demonstrations, self.config.model, class_names)
        cached = self.cache.get(key)
        if cached is not None and (cached.label in class_names or cached.abstained):
            return Verdict(self.name, cached, ids, key, cached=True)
        messages = build_messages(image, demonstrations, class_names)
        attempts: list[str] = []
        tokens = 0
        for _ in range(self.config.attempts):
            try:
                reply = self.client.chat.completions.create(
                    model=self.config.model, messages=messages, temperature=0.0,
                    max_tokens=self.config.max_tokens)
                if reply.usage is not None:
                    tokens += int(reply.usage.total_tokens or 0)
                if not reply.choices:
                    raise AnswerError("reply has no choices")
                message = reply.choices[0].message
                if getattr(message, "refusal", None):
                    raise AnswerError(f"refusal: {message.refusal[:80]}")
                answer = parse_answer(message.content, class_names)
            except openai.APITimeoutError:
                attempts.append(f"timeout after {self.config.timeout_s:g} s")
            except openai.APIStatusError as exc:
                attempts.append(f"HTTP {exc.status_code}")
            except openai.APIConnectionError as exc:
                attempts.append(f"connection error: {type(exc).__name__}")
            except AnswerError as exc:
                attempts.append(str(exc))
            else:
                answer = replace(answer, rationale=redact(answer.rationale or ""))
                self.cache.put(key, answer)
                return Verdict(self.name, answer, ids, key, tokens=tokens,
                               attempts=[redact(a) for a in attempts])
        attempts = [redact(a) for a in attempts]          # they may quote the server's text
        verdict = self.fallback.adjudicate(image, demonstrations, class_names, embedding)
        verdict.error = (f"{self.name} failed ({'; '.join(attempts)}); "
                         f"{verdict.adjudicator} answered")
        verdict.tokens, verdict.attempts, verdict.prompt_hash = tokens, attempts, key
        return verdict
