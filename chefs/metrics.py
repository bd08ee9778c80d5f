"""A chef's Prometheus endpoint: GET /metrics on its own port, text exposition format 0.0.4."""

from __future__ import annotations

from collections.abc import Callable

from artefacts.metrics import Histogram, LabelKey, MetricsServer, labels, render_prometheus


class ChefMetrics:
    """Counters a chef keeps; rendered on demand."""

    def __init__(self, chef_id: str) -> None:
        self.pod = chef_id
        self.steps: dict[LabelKey, int] = {}
        self.durations = Histogram()
        self.bytes_pulled = 0
        self.bytes_local = 0
        self.bytes_served: Callable[[], int] = lambda: 0
        self.store_bytes = 0

    def step_finished(self, outcome: str, duration_s: float) -> None:
        key = labels(outcome=outcome, pod=self.pod)
        self.steps[key] = self.steps.get(key, 0) + 1
        self.durations.observe(duration_s)

    def render(self) -> str:
        pod = labels(pod=self.pod)
        return render_prometheus(
            {
                "computepods_steps_total": dict(self.steps),
                "computepods_bytes_pulled_total": {pod: self.bytes_pulled},
                "computepods_bytes_local_total": {pod: self.bytes_local},
                "computepods_bytes_served_total": {pod: self.bytes_served()},
                "computepods_store_bytes": {pod: self.store_bytes},
                "computepods_lease_losses_total": {pod: 0},  # leases are lost on the MajorDomo's side
            },
            {"computepods_step_duration_seconds": {pod: self.durations}},
        )


__all__ = ["ChefMetrics", "MetricsServer"]
