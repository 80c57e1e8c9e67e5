"""The gateway's one service layer: both edges (FastAPI routes, the medseg.v1 gRPC servicer) call
`DataPlane`; deep code raises `common.errors` types and never knows which edge it serves.

`DataPlane` and `build_dataplane` are imported from gateway.service.dataplane when first asked for, so a
module of this package (e.g. the model registry, which `python -m tools.stack run` reads at every organ
server's start) is imported without the data plane's numerics (torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.service.dataplane import DataPlane, build_dataplane

__all__ = ["DataPlane", "build_dataplane"]


def __getattr__(name: str):
    if name in __all__:
        from gateway.service import dataplane

        return getattr(dataplane, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
