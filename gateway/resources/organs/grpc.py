"""The organs over gRPC: medseg.v1.Segmentation/ListOrgans."""

from __future__ import annotations

from medseg.v1 import segmentation_pb2 as pb

from gateway.access import ACCESS
from gateway.resources.grpc_edge import Servicer, model_ref


class OrgansRpc(Servicer):
    """medseg.v1.Segmentation's ListOrgans (the service is assembled in gateway/grpc_server.py)."""

    def ListOrgans(self, request, context):
        self.edge.admit(context, ACCESS["organs.list"])
        return pb.ListOrgansResponse(
            organs=[
                pb.Organ(
                    name=s.name,
                    display_name=s.display_name,
                    modality=s.modality,
                    label=s.label,
                    labels=list(s.labels),
                    dimensions=s.dimensions,
                    model=model_ref(s.model),
                    default_threshold=s.default_threshold,
                    ready=s.ready,
                )
                for s in self.dataplane.list_organs()
            ]
        )
