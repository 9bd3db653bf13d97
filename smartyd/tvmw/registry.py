"""
Which spec methods smartyd serves: the ``METHODS`` of every module in
L{MODULES}, merged.  Adding a module of methods is one name here.

A module may also export ``REDIRECTS = {"<method>": "<answer field>"}``:
for those methods the spec's ``redirect`` parameter (default 1) answers an
HTTP redirect to that field's URL instead of the JSON/XML body (ChannelUrl,
VideoUrl: a playlist entry plays), and ``NO_SESSION = {"<method>", ...}``:
methods called without an ``authkey`` (Login, HealthCheck).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Awaitable, Callable

from attrs import frozen

MODULES = ("auth", "live", "health", "customer", "films")

Method = Callable[..., Awaitable[dict]]


@frozen
class Registry:
    methods: dict[str, Method]
    redirects: dict[str, str]
    no_session: frozenset[str]


def build(modules: tuple[str, ...] = MODULES) -> Registry:
    methods: dict[str, Method] = {}
    redirects: dict[str, str] = {}
    no_session: set[str] = set()
    for name in modules:
        module = importlib.import_module(f"smartyd.tvmw.{name}")
        for url, fn in module.METHODS.items():
            if url in methods:
                raise ValueError(f"tvmw method {url} is served twice ({name})")
            methods[url] = fn
        redirects.update(getattr(module, "REDIRECTS", {}))
        no_session.update(getattr(module, "NO_SESSION", ()))
    return Registry(methods, redirects, frozenset(no_session))


#: The spec's 131 method URLs (api_data.json, v1.40.0), without slashes at
#: the ends: an unserved one answers "not served", anything else "no such method".
SPEC_METHODS = frozenset(
    json.loads((Path(__file__).with_name("spec_methods.json")).read_text(encoding="utf-8")))
