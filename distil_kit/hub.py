"""Whether the Hugging Face hub can be reached: asked once, quickly, before any hub client would retry for a
minute on a machine without network."""

from __future__ import annotations

import os
import socket

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def reachable(timeout: float = 3.0) -> bool:
    if any(os.environ.get(name, "0") not in ("0", "") for name in OFFLINE_VARIABLES):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False
