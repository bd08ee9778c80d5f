"""The MajorDomo's Prometheus metrics: steps by outcome, step durations, bytes pulled, lease losses."""

from __future__ import annotations

from artefacts.metrics import Histogram, LabelKey, labels, render_prometheus


class MajordomoMetrics:
    """Kept across the builds of one process (a `watch` is scraped between builds)."""

    def __init__(self, pod: str = "majordomo") -> None:
        self.pod = pod
        self.steps: dict[LabelKey, int] = {}
        self.durations = Histogram()
        self.bytes_pulled = 0
        self.bytes_local = 0
        self.lease_losses = 0
        self._keys: dict[str, LabelKey] = {}  # outcome -> its label key, made once (10,000 cached steps)

    def step(self, state: str, duration_s: float) -> None:
        key = self._keys.get(state)
        if key is None:
            key = self._keys[state] = labels(outcome=state, pod=self.pod)
        self.steps[key] = self.steps.get(key, 0) + 1
        if state == "run":
            self.durations.observe(duration_s)

    def render(self) -> str:
        pod = labels(pod=self.pod)
        return render_prometheus(
            {
                "computepods_steps_total": dict(self.steps),
                "computepods_bytes_pulled_total": {pod: self.bytes_pulled},
                "computepods_bytes_local_total": {pod: self.bytes_local},
                "computepods_lease_losses_total": {pod: self.lease_losses},
            },
            {"computepods_step_duration_seconds": {pod: self.durations}},
        )
