"""The embeddings codec: input turns, no stream, a refusal is the blocked error."""

from __future__ import annotations

from railcar.codecs.embeddings import EmbeddingsCodec

C = EmbeddingsCodec()


def test_input_forms_and_decisions() -> None:
    assert [t.path for t in C.request_messages({"input": "a"})] == ["$.input"]
    assert [t.path for t in C.request_messages({"input": ["a", "b"]})] == ["$.input[0]", "$.input[1]"]
    assert C.request_messages({"input": [[1, 2]]}) == []
    assert not C.streams and C.refusal_status == 400 and C.operation == "embeddings"
    assert C.refusal_body("m", "no", "r")["error"]["code"] == "content_blocked"
    attrs = C.span_attributes({"model": "e", "input": "a", "encoding_format": "base64", "dimensions": 8},
                              {"model": "e-1", "usage": {"prompt_tokens": 2, "total_tokens": 2}})
    assert attrs["gen_ai.request.encoding_formats"] == ["base64"] and attrs["gen_ai.usage.input_tokens"] == 2
    assert attrs["gen_ai.embeddings.dimension.count"] == 8
