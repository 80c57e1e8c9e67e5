"""The clinical loop's services for both edges, built once per process beside the DataPlane."""

from __future__ import annotations

from common import model_store
from common.pacs import Pacs
from gateway.service.dataplane import DataPlane
from gateway.service.evaluation_jobs import EvaluationJobs
from gateway.service.evaluations import Evaluator
from gateway.service.model_registry import ModelDirectory, Promotions
from gateway.service.model_rollout import ManagementFactory, ModelRollout, build_rollout
from gateway.service.pacs import PacsGateway
from gateway.service.studies import StudyJobs
from gateway.service.training_jobs import TrainingJobs


def default_management(settings) -> ManagementFactory:
    """organ → a ManagementClient for its TorchServe (address and key as common.model_store finds them)."""

    def factory(organ: str):
        # looked up on the module at call time, so a test can point it at its own TorchServe
        return model_store.management_client(organ, settings, timeout=30.0)

    return factory


class Clinic:
    def __init__(
        self,
        dataplane: DataPlane,
        settings,
        *,
        management: ManagementFactory | None = None,
        rollout: ModelRollout | None = None,
    ):
        self.dataplane = dataplane
        self.settings = settings
        self.directory = ModelDirectory()
        dataplane.registry.model_source = self.directory.get  # the gateway serves the database's default
        self.evaluator = Evaluator(dataplane)
        management = management or default_management(settings)
        rollout = rollout or build_rollout(settings, dataplane.store, management)
        self.promotions = Promotions(
            self.evaluator.evaluate_dataset, rollout, self.directory, settings.promotion_max_dice_drop
        )
        self.jobs = TrainingJobs(settings, dataplane.store, management=management)
        self.jobs.on_candidate = self.promotions.serve_candidates
        self.studies = StudyJobs(dataplane, settings)  # workers start with the gateway, or at the first study
        self.evaluation_jobs = EvaluationJobs(self.evaluator, settings)  # the same
        self.pacs = PacsGateway(Pacs.from_settings(settings), settings)
        self.studies.publish_seg = self.pacs.store_seg  # a study from the PACS stores its SEG back there

    def default_threshold(self, organ: str) -> float:
        return self.dataplane.registry.default_threshold(organ)
