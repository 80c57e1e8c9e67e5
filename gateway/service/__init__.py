"""The gateway's one service layer: both edges (FastAPI routes, the medseg.v1 gRPC servicer) call
`DataPlane`; deep code raises `common.errors` types and never knows which edge it serves."""

from gateway.service.dataplane import DataPlane, build_dataplane

__all__ = ["DataPlane", "build_dataplane"]
