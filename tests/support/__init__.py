"""Plain helpers that tests in several folders share (fixtures they share live in
tests/conftest.py). Nothing here imports an optional SDK or Redis at import time: the
recipes' Instructor run has neither."""
