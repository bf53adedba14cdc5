"""Tests for semiseg.errors."""

from __future__ import annotations

from semiseg.errors import first_line


def test_first_line_takes_the_first_line_and_caps_its_length():
    assert first_line(RuntimeError("  shape mismatch\nsecond line")) == "shape mismatch"
    assert first_line(RuntimeError("x" * 300), 10) == "x" * 10


def test_first_line_of_an_empty_message_is_the_type_name():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("   ")) == "ValueError"
