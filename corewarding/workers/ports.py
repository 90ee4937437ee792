"""A free TCP port for a torch.distributed rendezvous (both worker groups start one)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port that no process on this machine listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])
