"""The dashboard in a real browser: Debian's Chromium, headless, driven by selenium through Debian's
chromedriver (so nothing downloads a browser or a driver), against the server, two workers and the
simulator running as processes.

The page signs in with an admin key, shows jobs submitted over the API, and shows a breaker opening
when the simulator fails a model's first deployment. Screenshots go to
``$LLM_ROUTER_TEST_ARTIFACTS/dashboard`` (default ``/tmp/llm-router-test-artifacts/dashboard``); the
test prints where. Without Chromium the test is skipped, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ObsFleet, http

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1700",
)
HI = [{"role": "user", "content": "hello from the browser test"}]


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    base = os.environ.get("LLM_ROUTER_TEST_ARTIFACTS")
    # outside pytest's own temporary root, which other runs on the machine prune
    path = Path(base or Path(tempfile.gettempdir()) / "llm-router-test-artifacts") / "dashboard"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\ndashboard screenshots: {path}")
    return path


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        message = (
            f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver (make test does)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="llm-router-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # the driver and the browser are given: selenium's manager must never look for (or fetch) either
    os.environ["SE_OFFLINE"] = "true"
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_dashboard_shows_jobs_and_a_breaker_opening(
    obs_fleet: ObsFleet, sim: Any, browser: Any, artifacts: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )

    def find(css: str) -> Any:
        """An element as the page shows it now (a table re-rendered since is looked up again)."""
        return wait.until(lambda d: d.find_element(By.CSS_SELECTOR, css))

    def text(css: str) -> str:
        return wait.until(lambda d: d.find_element(By.CSS_SELECTOR, css).text or None)

    def shot(name: str) -> None:
        browser.save_screenshot(str(artifacts / f"{name}.png"))

    # sign in: the page asks for a key; a tenant's key is refused, an admin key opens it
    browser.get(f"{obs_fleet.url}/dashboard")
    box = browser.find_element(By.NAME, "key")
    box.send_keys(obs_fleet.user_key)
    box.submit()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#login .error"), "not an admin key"))
    shot("01-sign-in-refused")
    box = browser.find_element(By.NAME, "key")
    box.send_keys(obs_fleet.admin_key)
    box.submit()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "live"))
    wait.until(lambda d: int(d.find_element(By.TAG_NAME, "body").get_attribute("data-samples") or 0) >= 2)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#queues .card")) == 2)
    assert {
        c.get_attribute("data-queue") for c in browser.find_elements(By.CSS_SELECTOR, "#queues .card")
    } == {
        "bulk",
        "interactive",
    }
    assert "workers 2" in text('#queues .card[data-queue="bulk"]')
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-depth canvas")  # uPlot drew its charts

    # jobs submitted over the API appear, with their tenant, model and status
    ids = obs_fleet.submit([{"model": "gpt-4o-mini", "messages": HI} for _ in range(5)])
    for job_id in ids:
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'#jobs tr[data-job-id="{job_id}"]')))
    wait.until(
        lambda d: all(
            d.find_element(By.CSS_SELECTOR, f'#jobs tr[data-job-id="{j}"]').get_attribute("data-status")
            == "succeeded"
            for j in ids
        )
    )
    row = f'#jobs tr[data-job-id="{ids[0]}"]'
    assert all(word in text(row) for word in ("acme", "gpt-4o-mini", "openai"))
    wait.until(lambda d: "gpt-4o-mini" in d.find_element(By.ID, "cost-model").text)
    shot("02-jobs")

    # the drill-down: the record's attempts, cost and response
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, row).click() or True)
    dialog = wait.until(ec.visibility_of_element_located((By.ID, "job")))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#job-attempts tbody tr"))
    attempt = text("#job-attempts tbody tr")
    assert "openai" in attempt and "success" in attempt
    assert '"chat.completion"' in browser.find_element(By.ID, "job-response").text
    assert "$" in dialog.find_element(By.ID, "job-summary").text
    shot("03-drill-down")
    find("#job .close").click()

    # the simulator fails gpt-4.1-nano's first deployment: two failures in a row open its breaker
    # (the jobs still succeed, on the fallback deployment)
    rules = [{"credential": "sk-sim-openai", "model": "gpt-4.1-nano", "kind": "status", "status": 500}]
    assert http("POST", f"{sim.url}/_sim/faults", body={"rules": rules, "replace": True})[0] == 200
    try:
        failing = obs_fleet.submit([{"model": "gpt-4.1-nano", "messages": HI} for _ in range(2)])
        open_row = '#breakers tr[data-deployment="openai/gpt-4.1-nano"][data-state="open"]'
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, open_row)))
        assert "open" in text(open_row)
        for job_id in failing:
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'#jobs tr[data-job-id="{job_id}"]')))
        shot("04-breaker-open")
    finally:
        http("POST", f"{sim.url}/_sim/faults", body={"rules": [], "replace": True})

    # a batch-lane job: the lanes panel shows the provider batch the batcher opened for it (the
    # simulator takes 3-4 s to finish it), then the job ends at the batch price
    assert http("POST", f"{sim.url}/_sim/lanes", body={"turnaround_s": [3, 4]})[0] == 200
    try:
        [parked] = obs_fleet.submit(
            [{"model": "gpt-4o-mini", "messages": HI, "lane": "batch", "deadline_s": 3600}]
        )
        batch_row = '#lanes tr[data-deployment="openai/gpt-4o-mini"]'
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, batch_row)))
        # the panel is rebuilt every sample (the batch's age ticks): read the row in one go, again
        # if it was replaced while being read (the wait ignores stale elements)
        cells = wait.until(
            lambda d: [
                c.text for c in d.find_element(By.CSS_SELECTOR, batch_row).find_elements(By.TAG_NAME, "td")
            ]
        )
        assert cells[1] == "openai/gpt-4o-mini" and cells[4] == "1", cells  # deployment, size
        assert "the operator's" in text("#lanes-summary")
        shot("05-lane-batch")
        (record,) = obs_fleet.wait_ended([parked], timeout=30)
        assert record["status"] == "succeeded" and record["lane"] == "batch", record
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, batch_row))  # the batch is done
        assert find("#lanes-empty").is_displayed()
    finally:
        http("POST", f"{sim.url}/_sim/lanes", body={})
    assert sorted(p.name for p in artifacts.glob("*.png")) == [
        "01-sign-in-refused.png",
        "02-jobs.png",
        "03-drill-down.png",
        "04-breaker-open.png",
        "05-lane-batch.png",
    ]
