"""rails/messages.py: message content as text, the conversation the input rails judge, the last user turn."""

from __future__ import annotations

from railcar.rails.messages import conversation, last_user, text_of


def test_text_of_strings_and_content_parts() -> None:
    assert text_of("plain") == "plain"
    parts = [{"type": "text", "text": "look at "}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "this"}, "junk", {"text": 3}]
    assert text_of(parts) == "look at this"
    assert text_of(None) == "" and text_of({"text": "not a list"}) == ""


def test_conversation_keeps_text_turns_and_every_user_turn() -> None:
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": ""},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
            {"role": "tool", "content": "result"}, "junk",
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert conversation(msgs) == [{"role": "system", "content": "be nice"}, {"role": "user", "content": ""},
                                  {"role": "user", "content": "hi"}]


def test_last_user() -> None:
    assert last_user([{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
                      {"role": "user", "content": [{"type": "text", "text": "second"}]},
                      {"role": "tool", "content": "t"}]) == "second"
    assert last_user([{"role": "assistant", "content": "a"}]) == ""
