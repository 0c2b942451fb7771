"""SupervisorMetrics: a registry of its own, served over HTTP, written as a textfile."""

from __future__ import annotations

import argparse
import signal
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ftharness.cli import build_parser
from ftharness.events import CommitSeen
from ftharness.metrics import (
    MetricsConfig,
    MetricsUnavailable,
    NullMetrics,
    SupervisorMetrics,
    start_metrics,
)
from ftharness.policy import Outcome
from ftharness.process import ExitStatus


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse(response.read().decode())


@pytest.fixture
def served():
    metrics = SupervisorMetrics.start(MetricsConfig(port=0))
    yield metrics
    metrics.close()


def test_observations_are_served_over_http(served):
    port = served.port
    assert port
    served.attempt_launched(1, 10, CommitSeen(4, 1000.0, 1000.5, 50))
    served.checkpoints_committed([CommitSeen(8, 1001.0, 1001.5, 60), CommitSeen(12, 1002.0, 0, 70)])
    served.attempt_ended(ExitStatus(signal=signal.SIGKILL), Outcome.CRASHED, 12, None)
    served.attempt_launched(2, 11, CommitSeen(12, 1002.0, 1003.0, 70))
    served.stop_requested(signal.SIGTERM)
    served.attempt_ended(ExitStatus(code=143), Outcome.STOPPED, 13, 0.7)
    served.upload_finished(2.0, 1000)

    values = scrape(port)
    assert values[("ftharness_attempt", ())] == 2
    assert values[("ftharness_restarts_total", (("cause", "killed"),))] == 1
    assert values[("ftharness_restarts_total", (("cause", "crash"),))] == 0
    assert values[("ftharness_preemptions_total", ())] == 1
    assert values[("ftharness_last_committed_step", ())] == 12
    assert values[("ftharness_last_commit_timestamp_seconds", ())] == 1002.0
    assert values[("ftharness_seconds_since_last_commit", ())] > 1e9  # since 1970 + 1002 s
    assert values[("ftharness_checkpoints_committed_total", ())] == 2  # new ones only
    assert values[("ftharness_checkpoint_bytes_total", ())] == 130
    assert values[("ftharness_final_checkpoint_seconds_count", ())] == 1
    assert values[("ftharness_final_checkpoint_seconds_sum", ())] == pytest.approx(0.7)
    assert values[("ftharness_upload_seconds_count", ())] == 1
    assert values[("ftharness_upload_bytes_total", ())] == 1000
    # A registry of its own: nothing leaks into the process-wide one.
    assert REGISTRY.get_sample_value("ftharness_attempt") is None


def test_a_groups_relaunches_are_counted_by_their_peer_cause(served):
    served.attempt_launched(1, 10, None)
    served.attempt_ended(ExitStatus(code=79), Outcome.PEER_STOPPED, None, None)
    served.attempt_launched(2, 11, None)
    served.attempt_ended(ExitStatus(code=76), Outcome.PEER_LOST, None, None)
    served.attempt_launched(3, 12, None)
    values = scrape(served.port)
    assert values[("ftharness_restarts_total", (("cause", "peer_stopped"),))] == 1
    assert values[("ftharness_restarts_total", (("cause", "peer_lost"),))] == 1
    assert values[("ftharness_restarts_total", (("cause", "crash"),))] == 0


def test_a_crash_not_restarted_is_no_restart(served):
    served.attempt_launched(1, 10, None)
    served.attempt_ended(ExitStatus(code=1), Outcome.CRASHED, None, None)
    values = scrape(served.port)
    assert values[("ftharness_restarts_total", (("cause", "crash"),))] == 0
    assert (
        values[("ftharness_seconds_since_last_commit", ())]
        != values[("ftharness_seconds_since_last_commit", ())]
    )  # NaN before any commit


def test_close_stops_the_server():
    metrics = SupervisorMetrics.start(MetricsConfig(port=0))
    port = metrics.port
    metrics.close()
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_a_port_in_use_is_a_usage_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(MetricsUnavailable, match=r"cannot serve metrics on 127\.0\.0\.1"):
            SupervisorMetrics.start(MetricsConfig(port=taken.getsockname()[1]))


def test_textfile_is_written_at_start_on_events_and_at_close(tmp_path):
    path = tmp_path / "ftharness.prom"
    metrics = SupervisorMetrics.start(MetricsConfig(textfile=str(path)))
    assert parse(path.read_text())[("ftharness_attempt", ())] == 0
    metrics.attempt_launched(3, 10, None)
    assert parse(path.read_text())[("ftharness_attempt", ())] == 3
    metrics.checkpoints_committed([CommitSeen(5, 1.0, 2.0, 3)])
    metrics.close()
    assert parse(path.read_text())[("ftharness_last_committed_step", ())] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ftharness.prom"]  # no temporaries


def supervise_args(*options: str) -> argparse.Namespace:
    return build_parser().parse_args(["supervise", *options, "--", "true"])


def test_options_start_the_right_metrics(tmp_path, monkeypatch):
    assert isinstance(start_metrics(supervise_args()), NullMetrics)
    with pytest.raises(MetricsUnavailable, match=r"0\.\.65535"):
        start_metrics(supervise_args("--metrics-port", "70000"))
    with pytest.raises(MetricsUnavailable, match="cannot write the metrics textfile"):
        start_metrics(supervise_args("--metrics-textfile", str(tmp_path / "no" / "x.prom")))
    monkeypatch.setenv("FTHARNESS_METRICS_TEXTFILE", str(tmp_path / "env.prom"))
    # defaults are read when the parser is built
    metrics = start_metrics(supervise_args())
    metrics.close()
    assert (tmp_path / "env.prom").exists()
