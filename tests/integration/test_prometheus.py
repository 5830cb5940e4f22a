"""The alert rules in infra/prometheus/ with Debian's promtool: they parse, and each fires on the
series it is for and stays quiet on a healthy worker's (alerts_test.yml)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from connectors.broker import free_port
from connectors.producer import RecordProducer
from stream.settings import KafkaSettings, TopicSettings
from tests.conftest import Collector, WorkerFactory
from tests.integration.live_page import check_live_page

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "infra" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


@pytest.mark.debian_tools("promtool")
def test_the_alert_rules_parse() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


@pytest.mark.debian_tools("promtool")
def test_every_alert_rule_fires_and_stays_quiet_where_it_should() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        case["alertname"]
        for test in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    rules = {
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert tested == rules, f"alerts without a firing test: {sorted(rules - tested)}"


@pytest.mark.debian_tools("promtool")
def test_the_scrape_config_loads_the_rules() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout


# --- A real Prometheus scraping a real worker ---------------------------------------------------

GRAFANA_DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "sentistream.json"


def dashboard_expressions() -> list[str]:
    document = json.loads(GRAFANA_DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def alert_expressions() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


class RunningPrometheus:
    """Debian's Prometheus on loopback, scraping one target every second, with the alert rules."""

    def __init__(self, folder: Path, target: str) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS / "alerts.yml")],
            "scrape_configs": [{
                "job_name": "sentistream-worker", "metrics_path": "/metrics",
                "static_configs": [{"targets": [target]}],
            }],
        }  # fmt: skip
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (folder / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.wait_until(lambda: self.get("/-/ready") is not None, 60, "Prometheus ready")

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return bytes(r.read())
        except urllib.error.HTTPError:
            raise  # an answer: the caller decides
        except (urllib.error.URLError, ConnectionError):
            return None

    def query(self, expr: str) -> dict[str, Any]:
        url = f"/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            body = self.get(url)
        except urllib.error.HTTPError as exc:  # 400: the expression does not parse
            return dict(json.loads(exc.read()))
        assert body is not None, f"Prometheus did not answer {expr}"
        return dict(json.loads(body))

    def wait_until(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            assert self.process.poll() is None, f"Prometheus exited: {self.process.returncode}"
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {what}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.one_broker
@pytest.mark.debian_tools("prometheus", "chromium")
def test_the_dashboard_queries_return_series_and_the_live_page_shows_the_stream(
    kafka: KafkaSettings,
    topics: TopicSettings,
    start_worker: WorkerFactory,
    collect: Collector,
    minilm: Path,
    tmp_path: Path,
) -> None:
    from stream.core.drift import Profile

    reference = Profile()
    for index in range(200):
        reference.add_event({"label": "POSITIVE" if index % 2 else "NEGATIVE", "score": 0.9,
                             "token_count": 12})  # fmt: skip
    (tmp_path / "reference.json").write_bytes(orjson.dumps(reference.to_json()))
    worker = start_worker(
        minilm, topics,
        SENTISTREAM_BACKEND="torch-fp32",
        SENTISTREAM_DRIFT_REFERENCE=str(tmp_path / "reference.json"),
        SENTISTREAM_DRIFT_TOPIC=f"{topics.events_topic}.drift", SENTISTREAM_DRIFT_WINDOW_S="2",
        SENTISTREAM_WINDOW_TUMBLING_S="2", SENTISTREAM_WINDOW_HOPPING_S="4",
        SENTISTREAM_WINDOW_HOP_S="2", SENTISTREAM_WINDOW_GRACE_S="0.5",
        SENTISTREAM_IDLE_FLUSH_S="2",
    )  # fmt: skip
    prometheus = RunningPrometheus(tmp_path, f"127.0.0.1:{worker.env['SENTISTREAM_WEB_PORT']}")
    try:
        producer = RecordProducer(kafka)
        texts = ["what a wonderful day", "this is awful", "I love it", "worst service ever"]
        sent = 0
        for second in range(8):  # 8 s of event time: drift and tumbling windows close
            for index in range(25):
                text = texts[index % 4]
                gold = "POSITIVE" if index % 2 == 0 else "NEGATIVE"
                source = "reviews" if index % 3 else "support-chat"
                value = orjson.dumps({"id": f"p{second}-{index}", "text": text, "label": gold,
                                      "source": source})  # fmt: skip
                producer.send(topics.input_topic, value if index != 7 else b"{not json")
                sent += 1
            producer.flush()
            time.sleep(1.0)
        collect(topics, expected=sent, worker=worker)

        expressions = dashboard_expressions()
        empty: list[str] = []

        def every_panel_has_series() -> bool:
            empty.clear()
            for expr in expressions:
                answer = prometheus.query(expr)
                assert answer["status"] == "success", (expr, answer)
                if not answer["data"]["result"]:
                    empty.append(expr)
            return not empty

        try:
            prometheus.wait_until(every_panel_has_series, 90, "every dashboard query to answer")
        except pytest.fail.Exception:
            pytest.fail(f"dashboard queries without series: {empty}")
        for expr in alert_expressions():
            answer = prometheus.query(expr)
            assert answer["status"] == "success", (expr, answer)
        bad = prometheus.query("sum(rate(sentistream_messages_in_total[1m])")  # unbalanced
        assert bad["status"] == "error"  # the check above can tell a broken expression
        rules = json.loads(prometheus.get("/api/v1/rules") or b"{}")
        loaded = [rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]]
        assert len(loaded) == len(alert_expressions())
        assert all(
            rule["health"] == "ok" for group in rules["data"]["groups"] for rule in group["rules"]
        ), rules
    finally:
        prometheus.stop()
    # the same worker's live page, in headless Chromium
    check_live_page(f"http://127.0.0.1:{worker.env['SENTISTREAM_WEB_PORT']}", tmp_path)
