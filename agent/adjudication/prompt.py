"""The few-shot prompt (instruction, K labelled demonstrations, the frame) and the strict
parsing of the JSON answer. The prompt offers "none of these / unsure" (label "none"): a frame
unlike every class, or one the model cannot tell, gets no class from it (`ABSTAIN`)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import numpy as np

from agent.adjudication.base import ABSTAIN, Answer, AnswerError, Demonstration
from agent.adjudication.images import png_bytes, png_data_url

SYSTEM = ("You are an expert electron microscopist classifying scanning electron microscope "
          "images of nanomaterials by morphology.")


def instruction(class_names: list[str]) -> str:
    labels = ", ".join(f'"{c}"' for c in class_names)
    return (f"Classify the last image into exactly one of these labels: {labels}. "
            "The labelled images before it are examples. If the image shows none of these "
            f'(another kind of specimen or instrument), or you are unsure, answer "{ABSTAIN}". '
            'Reply with strict JSON only, no prose: {"label": <one of the labels, or '
            f'"{ABSTAIN}" for none of these / unsure>, "confidence": <number 0..1>, '
            '"rationale": <one short sentence>}.')


def build_messages(image: np.ndarray, demonstrations: list[Demonstration],
                   class_names: list[str], max_side: int = 256) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": instruction(class_names)}]
    for i, demo in enumerate(demonstrations, 1):
        content.append({"type": "text", "text": f"Example {i}: label {demo.label}"})
        content.append({"type": "image_url",
                        "image_url": {"url": png_data_url(demo.image, max_side)}})
    content.append({"type": "text", "text": "Image to classify:"})
    content.append({"type": "image_url", "image_url": {"url": png_data_url(image, max_side)}})
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def prompt_hash(image: np.ndarray, demonstrations: list[Demonstration], model: str,
                class_names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(png_bytes(image))
    for demo in demonstrations:
        h.update(demo.id.encode())
        h.update(demo.label.encode())
    h.update(model.encode())
    h.update((SYSTEM + instruction(class_names)).encode())
    return h.hexdigest()[:32]


_JSON = re.compile(r"\{.*\}", re.DOTALL)
_ABSTENTIONS = {ABSTAIN, "none of these", "none of the above", "unsure", "unknown"}


def parse_answer(text: str | None, class_names: list[str]) -> Answer:
    """Strict JSON {label, confidence, rationale} with a label from `class_names`, or an
    abstention ("none", "none of these", "unsure", "unknown": the label `ABSTAIN`)."""
    if not text or not text.strip():
        raise AnswerError("empty answer (refusal?)")
    match = _JSON.search(text)
    if match is None:
        raise AnswerError(f"malformed JSON answer: no JSON object in {text[:80]!r}")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise AnswerError(f"malformed JSON answer: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("label"), str):
        raise AnswerError(f"answer has no string 'label': {match.group(0)[:80]!r}")
    canonical = {c.lower(): c for c in class_names}
    said = data["label"].strip().lower()
    label = canonical.get(said) or (ABSTAIN if said in _ABSTENTIONS else None)
    if label is None:
        raise AnswerError(f"label {data['label']!r} is not one of the allowed labels")
    try:
        confidence = float(data.get("confidence", 0.0))
    except (TypeError, ValueError) as exc:
        raise AnswerError(f"confidence {data.get('confidence')!r} is not a number") from exc
    if not 0.0 <= confidence <= 1.0:
        raise AnswerError(f"confidence {confidence} outside [0, 1]")
    return Answer(label, confidence, str(data.get("rationale", ""))[:500])
