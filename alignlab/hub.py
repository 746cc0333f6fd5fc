"""Whether the Hugging Face Hub can be used now: the offline switches, and one TCP probe.

Models (alignlab.model.loading) and datasets (alignlab.data.io) ask here before they touch the
network, because offline the Hub's client retries each request with back-off for a long while
(datasets: 5 retries, about 25 s; models: about 50 s) before it gives up with an unclear message.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

TRUE = ("1", "true", "yes", "on")


def _flag(name: str) -> Optional[bool]:
    """An environment switch as a bool; None when it is not set."""
    value = os.environ.get(name)
    return None if value is None else value.strip().lower() in TRUE


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is on, in the environment or in huggingface_hub's constants."""
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or any(
        _flag(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def datasets_offline_switch() -> Optional[str]:
    """The switch that puts `datasets` offline, named, or None. HF_DATASETS_OFFLINE, when set, decides
    alone (as `datasets` itself reads it); otherwise HF_HUB_OFFLINE does."""
    own = _flag("HF_DATASETS_OFFLINE")
    if own is not None:
        return "HF_DATASETS_OFFLINE is set" if own else None
    return "HF_HUB_OFFLINE is set" if hub_offline() else None


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = 2.0) -> bool:
    """One TCP connection to the hub (or the HTTPS proxy), at most `timeout` seconds; the answer is
    kept for the process."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    hub = urlsplit(endpoint())
    proxy = urllib.request.getproxies().get(hub.scheme)
    target = urlsplit(proxy) if proxy and not urllib.request.proxy_bypass(hub.hostname or "") else hub
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((target.hostname, port), timeout=timeout):
            return True
    except (OSError, TypeError):  # no route, no DNS, refused; TypeError: no host in the URL
        return False


def datasets_unavailable() -> Optional[str]:
    """Why `datasets` cannot reach the Hub now (an offline switch, or no network), or None when it can."""
    switch = datasets_offline_switch()
    if switch:
        return switch
    return None if hub_reachable() else f"{endpoint()} cannot be reached (offline?)"


@contextlib.contextmanager
def offline_mode(enabled: bool = True):
    """`datasets` and huggingface_hub offline while inside, whatever the environment said when they were
    imported: a cached dataset loads from the cache, and anything else fails at once instead of
    retrying a network that is not there."""
    if not enabled:
        yield
        return
    import datasets.config
    from huggingface_hub import constants

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved
