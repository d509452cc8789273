"""``python -m httpx_coalesce demo``: see coalescing work against a local fake LLM API."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "demo":
        print("usage: python -m httpx_coalesce demo [--requests N] [--latency SECONDS]", file=sys.stderr)
        return 2
    try:
        from ._demo.demo import main as demo
    except ImportError as error:  # uvicorn/starlette come with the demo extra
        print(f"the demo needs its extra: pip install 'httpx-coalesce[demo]' ({error})", file=sys.stderr)
        return 2
    return demo(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
