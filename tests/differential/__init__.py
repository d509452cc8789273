"""The differential suite of issue 11: every scenario is played through the bare inner
transport and through ``CoalescingTransport(transport=inner)``, and whatever a caller
can observe must be the same, but for identical overlapping requests sharing one call.

- ``server.py``: the loopback server (holds heads or bodies on gates, cuts bodies).
- ``recording.py``: the inner transport, a recording, fault-injecting wrapper around a
  real httpx/httpx2 transport.
- ``scenarios.py``: a scenario, how it is played (sync threads, asyncio or trio tasks)
  and what was seen, as plain values to compare.
- ``test_alone_and_coalesced.py``: one caller, behaviour by behaviour.
- ``test_overlap.py``: several identical callers at once.
- ``test_generated.py``: Hypothesis combinations, one caller.
"""
