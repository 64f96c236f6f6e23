"""`/metrics`: scraped with the control plane's token after a known workload, parsed with Prometheus' own text
parser; the counters and histograms match the calls made."""

from __future__ import annotations

import observe_app
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shoal.exception import ExecutionError
from tests.conftest import wait_for


def scrape(cp) -> dict[str, list]:
    token = (cp.home / "token").read_text().strip()
    resp = requests.get(f"{cp.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_need_the_token(control_plane):
    assert requests.get(f"{control_plane.url}/metrics", timeout=30).status_code == 401
    assert requests.get(f"{control_plane.url}/metrics", headers={"Authorization": "Bearer wrong"},
                        timeout=30).status_code == 401


def test_counters_and_histograms_match_a_known_workload(control_plane):
    with observe_app.app.run() as app:
        assert list(observe_app.square.map(range(7))) == [x * x for x in range(7)]
        assert observe_app.square.remote(9) == 81
        for x in (-1, -2):
            with pytest.raises((ValueError, ExecutionError)):
                observe_app.fail_on_negative.remote(x)
        assert observe_app.fail_on_negative.remote(3) == 3
        ids = {"app_id": app.app_id}
        sq = {**ids, "function_name": "square", "app_name": "observe"}
        fl = {**ids, "function_name": "fail_on_negative"}
        # The map call completes once its last output is stored: wait for the store, not for a time.
        assert wait_for(lambda: value(scrape(control_plane), "shoal_calls_finished_total", **sq) == 2, timeout=30)
        m = scrape(control_plane)

        assert value(m, "modal_input_events_total_inputs_total", **sq) == 8
        assert value(m, "modal_input_events_successes_total", **sq) == 8
        assert value(m, "shoal_inputs_total", **sq, status="success") == 8
        assert value(m, "modal_input_events_elapsed_time_us_count", **sq) == 8
        assert value(m, "modal_input_events_input_queue_time_us_count", **sq) == 8
        assert value(m, "modal_input_events_elapsed_time_us_sum", **sq) > 0
        # Every observation falls in the +Inf bucket.
        assert value(m, "modal_input_events_elapsed_time_us_bucket", **sq, le="+Inf") == 8
        assert value(m, "shoal_calls_total", **sq, kind="map") == 1
        assert value(m, "shoal_calls_total", **sq, kind="remote") == 1

        assert value(m, "modal_input_events_total_inputs_total", **fl) == 3
        assert value(m, "modal_input_events_successes_total", **fl) == 1
        assert value(m, "shoal_inputs_total", **fl, status="failure") == 2
        assert value(m, "shoal_calls_total", **fl, kind="remote") == 3

        # Cold starts: one observation per container that became ready for the function.
        assert value(m, "modal_input_events_coldstart_time_us_count", **sq) >= 1
        assert value(m, "modal_container_running", **sq) >= 1
        assert value(m, "modal_function_pending_inputs", **sq) == 0
        assert value(m, "modal_function_running_inputs", **sq) == 0
        # Each running container of the function reports its memory.
        assert wait_for(lambda: value(scrape(control_plane), "modal_memory_usage", **sq) > 0, timeout=30)

        # Control-plane health.
        assert value(m, "shoal_store_commit_seconds_count") > 0
        assert wait_for(lambda: value(scrape(control_plane), "shoal_event_loop_lag_seconds_count") > 0, timeout=30)
        started = value(m, "modal_input_events_coldstart_time_us_count", **sq)
    # The app stopped: each of its containers ended, counted by why (the control plane stopped them).
    # (At least as many as became ready: one still starting when the app stopped ends too, never ready.)
    assert started >= 1
    assert wait_for(lambda: value(scrape(control_plane), "shoal_container_exits_total", **sq, reason="stopped")
                    >= started, timeout=60)


def test_pending_and_running_inputs_are_levels(control_plane):
    with observe_app.app.run() as app:
        labels = {"app_id": app.app_id, "function_name": "slow"}
        call = observe_app.slow.spawn(3.0)
        assert wait_for(lambda: value(scrape(control_plane), "modal_function_running_inputs", **labels) == 1,
                        timeout=60)
        assert call.get(timeout=60) == 3.0
        assert value(scrape(control_plane), "modal_function_running_inputs", **labels) == 0


def test_web_requests_by_status_and_latency(control_plane):
    import web_simple_app

    with web_simple_app.app.run(quiet=True) as app:
        url = web_simple_app.f.get_web_url()
        for _ in range(3):
            assert requests.get(url, timeout=60).status_code == 200
        assert requests.get(url.rstrip("/") + "/no-such-path", timeout=60).status_code == 404
        labels = {"app_id": app.app_id, "function_name": "f"}
        # A request is counted when the proxy logs it, at its end: wait for that, not for a time.
        assert wait_for(lambda: value(scrape(control_plane), "shoal_web_request_duration_seconds_count",
                                      **labels) == 4, timeout=30)
        m = scrape(control_plane)
        assert value(m, "shoal_web_requests_total", **labels, status="200") == 3
        assert value(m, "shoal_web_requests_total", **labels, status="404") == 1
