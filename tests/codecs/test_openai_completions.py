"""The legacy Completions codec: prompt turns, the text stream key, decisions."""

from __future__ import annotations

from railcar.codecs.openai_completions import OpenAICompletionsCodec
from railcar.core import wire

C = OpenAICompletionsCodec()


def test_prompt_forms_and_stream_key() -> None:
    assert [t.path for t in C.request_messages({"prompt": "p", "suffix": "s"})] == ["$.prompt", "$.suffix"]
    assert [t.text for t in C.request_messages({"prompt": ["a", [1, 2], "b"]})] == ["a", "b"]
    assert C.request_messages({"prompt": [1, 2, 3]}) == []
    chunk = {"id": "x", "object": "text_completion", "choices": [{"index": 0, "text": "hel", "finish_reason": None}]}
    assert [(p.path, p.stream_key, p.kind) for p in C.stream_strings(chunk) if p.text == "hel"] == [
        ("$.choices[0].text", ("choices", 0, "text"), "text")]
    assert C.blocked_frames("r") == wire.blocked_frames("r") and C.operation == "text_completion"
    assert C.validate({"model": "m", "prompt": "p"}) is None
