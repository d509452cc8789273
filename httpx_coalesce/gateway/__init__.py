"""``httpx-coalesce serve``: a reverse proxy that coalesces identical in-flight requests.

Clients in any language point their base URL at it; underneath is the same
:class:`~httpx_coalesce.CoalescingTransport`. Needs ``pip install "httpx-coalesce[gateway]"``
to serve; importing this package does not.
"""
