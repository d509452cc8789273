"""The real openai and anthropic SDKs over CoalescingTransport, against the fake LLM API."""
