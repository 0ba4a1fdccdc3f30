"""GET /metrics: what the server did (tokens, requests per model, time to first token, finish reasons) and what it
is doing (queue depth, running batch, prompt KV cache hits), in a registry of its own per app."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from serving_testutils import Gate, running, wait_for

from peft_ext.serving.app import create_app


def _scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_report_traffic_and_state(make_service: Any) -> None:
    gate = Gate()
    service = make_service(step_hook=gate)

    body = {"model": "p6", "prompt": "hello world", "max_tokens": 4, "temperature": 0}
    try:
        with running(service) as server, httpx.Client(base_url=server.url, timeout=300) as http:
            for _ in range(3):
                assert http.post("/v1/completions", json=body).json()["choices"][0]["finish_reason"] == "length"
            assert http.post("/v1/completions", json={**body, "stream": True}).status_code == 200
            seen = _scrape(http)
            assert seen[("peft_ext_requests_total", (("model", "p6"),))] == 4
            assert seen[("peft_ext_generated_tokens_total", (("model", "p6"),))] == 16  # rate() of it: tokens/s
            assert seen[("peft_ext_generations_finished_total", (("reason", "length"),))] == 4
            assert seen[("peft_ext_time_to_first_token_seconds_count", ())] == 4
            # p6's keys/values were computed for the first request and reused by the three others.
            assert seen[("peft_ext_prompt_kv_misses_total", ())] == 1
            assert seen[("peft_ext_prompt_kv_hits_total", ())] == 3
            assert seen[("peft_ext_prompt_kv_hit_rate", ())] == 0.75
            assert seen[("peft_ext_running_requests", ())] == 0 and seen[("peft_ext_queue_depth", ())] == 0

            gate.close()
            with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as streamed:
                next(streamed.iter_lines())
                wait_for(lambda: _scrape(http)[("peft_ext_running_requests", ())] == 1, "a running request")
                gate.open()
    finally:
        gate.open()


def test_each_app_has_its_own_registry(make_service: Any) -> None:
    service = make_service()
    first, second = create_app(service), create_app(service)  # the default global registry would refuse this
    assert first.state.metrics.registry is not second.state.metrics.registry
    service.generate("p0", ["hello"], service_params())
    for app in (first, second):
        assert b'peft_ext_generated_tokens_total{model="p0"} 2.0' in app.state.metrics.exposition()


def service_params() -> Any:
    from peft_ext.serving.sampling import SamplingParams

    return SamplingParams(max_tokens=2, temperature=0)
