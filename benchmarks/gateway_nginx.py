"""nginx (the Debian package) as the gateway's rival, in a process of its own.

Two set-ups. ``plain``: a reverse proxy with keep-alive to the upstream, for the
unique-key latency. ``collapse``: the best request collapsing nginx can do for these
POSTs: ``proxy_cache`` keyed on the method, URI and ``$request_body`` (kept in one
memory buffer, or the variable would be empty and every body one key), POST made
cacheable, and ``proxy_cache_lock`` so that only the first request of a key goes
upstream while the others wait for the cache to be filled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from .gateway_tools import Process, free_port

__all__ = ["Nginx"]

_CONFIG = """
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=collapse:10m max_size=1g inactive=10m use_temp_path=off;
    upstream api {{
        server 127.0.0.1:{upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_body_buffer_size 1m;
        client_body_in_single_buffer on;
        client_max_body_size 4m;
        keepalive_requests 1000000;
        location = /healthz {{ return 200 "ok\\n"; }}
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{cache}
        }}
    }}
}}
"""

_COLLAPSE = """
            proxy_cache collapse;
            proxy_cache_methods POST;
            proxy_cache_key "$request_method$request_uri$request_body";
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_lock_age 60s;
            proxy_cache_valid 200 10m;
            proxy_ignore_headers Cache-Control Expires Set-Cookie X-Accel-Expires;
            proxy_buffering on;
"""


class Nginx:
    def __init__(self, upstream_port: int, collapse: bool) -> None:
        self._upstream_port = upstream_port
        self._collapse = collapse
        self._dir = ""
        self._process: Process | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self._dir = tempfile.mkdtemp(prefix="gateway-bench-nginx-")
        self.port = free_port()
        config = _CONFIG.format(
            # As root, nginx's workers would run as nobody, who cannot write here.
            user="user root;" if os.geteuid() == 0 else "",
            dir=self._dir,
            upstream=self._upstream_port,
            port=self.port,
            cache=_COLLAPSE if self._collapse else "",
        )
        path = Path(self._dir) / "nginx.conf"
        path.write_text(config)
        subprocess.run([binary, "-t", "-q", "-c", str(path), "-e", f"{self._dir}/error.log"], check=True)
        self._process = Process(
            [binary, "-c", str(path), "-e", f"{self._dir}/error.log"], f"{self.url}/healthz"
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
