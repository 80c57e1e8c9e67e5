"""Ports chosen for test servers: never the same one twice in a process, never one the kernel may give an
outgoing connection meanwhile (CI once started two pods on one port and lost the race)."""

from __future__ import annotations

import socket
from pathlib import Path

from common.launcher import free_port, free_ports


def test_ports_are_never_handed_out_twice_and_stay_clear_of_the_ephemeral_range():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    chosen = [free_port() for _ in range(300)] + [p for _ in range(20) for p in vars(free_ports()).values()]
    assert len(set(chosen)) == len(chosen)
    assert all(10000 <= p < low for p in chosen)


def test_a_chosen_port_can_be_bound():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", free_port()))
