"""Data for ``railcar demo``: recorded samples and the leaking sessions (:mod:`.leaks`).

Samples (JSONL in the format of ``../shared/fixtures/recorded/README.md``, whole VCR cassettes of the MIT-licensed
``pydantic/pydantic-ai`` test suite, commit 4fda38988f29, read as data; no credentials in them):
``recorded_sample.jsonl`` (24 Chat Completions interactions), ``recorded_responses_sample.jsonl`` (14 Responses API
interactions: streamed text and tool calls, reasoning, an error) and ``recorded_anthropic_sample.jsonl`` (15
Anthropic Messages interactions: streams with server tools, thinking, parallel tool use, an error).
"""
