"""Adjudication of unsure frames: a few-shot VLM over the OpenAI API, or an offline stand-in."""
