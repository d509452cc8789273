"""Demo support: an in-process fake LLM API server (OpenAI and Anthropic shapes) and a uvicorn runner.

Used by the demo, the integration tests and the SDK-compatibility tests; not part of the public API.
"""

from __future__ import annotations
