"""The dashboard in a real headless browser (Debian's chromium, driven through chromedriver by Selenium): deploy an
app, log in with `shoal dashboard --no-browser`'s link, find a function's calls and a failed input's traceback,
watch a container's log line arrive live, roll a deployment back from the page. Plus what a browser without the
login gets (nothing), and that a login link works once.

With SHOAL_DASHBOARD_SCREENSHOTS=DIR the pages it visits are saved there (docs/screenshots/ was made so)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
import requests

import shoal as modal
from tests.conftest import run_cli, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = os.environ.get("SHOAL_DASHBOARD_SCREENSHOTS")

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)")

# The observability tests' functions (tests/apps/observe_app.py), under a name of the test's and with a function
# that tells the deployed version apart.
APP = (Path(__file__).parents[1] / "apps" / "observe_app.py").read_text()
VERSION_FUNCTION = """

@app.function()
def version() -> int:
    return {version}
"""


def deploy(tmp_path: Path, name: str, version: int) -> None:
    path = tmp_path / "dash_app.py"
    assert 'modal.App("observe")' in APP
    path.write_text(APP.replace('modal.App("observe")', f"modal.App({name!r})")
                    + VERSION_FUNCTION.format(version=version))
    proc = run_cli("deploy", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def login_url() -> str:
    proc = run_cli("dashboard", "--no-browser")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={Path(os.environ.get('TMPDIR', '/tmp'))}"
                f"/shoal-chromium-{uuid.uuid4().hex[:8]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"{name}.png"))


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))


def test_dashboard_in_a_browser(private_control_plane, tmp_path, browser):
    from selenium.webdriver.common.by import By

    name = f"dash-{uuid.uuid4().hex[:6]}"
    deploy(tmp_path, name, 1)
    deploy(tmp_path, name, 2)
    assert modal.Function.from_name(name, "version").remote() == 2
    square = modal.Function.from_name(name, "square")
    assert list(square.map(range(5))) == [0, 1, 4, 9, 16]
    fail = modal.Function.from_name(name, "fail_on_negative")
    with pytest.raises(Exception, match="negative input -5 refused"):
        fail.remote(-5)
    assert fail.remote(5) == 5
    say = modal.Function.from_name(name, "say")
    assert say.remote("first line") == "first line"

    # Log in: the link sets the session cookie and lands on the apps page.
    browser.get(login_url())
    assert browser.current_url.endswith("/dashboard/")
    assert name in text_of(browser, "#apps")
    shot(browser, "apps")

    # The app: its functions and versions.
    browser.find_element(By.LINK_TEXT, name).click()
    assert "fail_on_negative" in text_of(browser, "#functions")
    assert "v2 current" in text_of(browser, "#versions")
    shot(browser, "app")

    # The function: its calls and the failed input's traceback.
    browser.find_element(By.LINK_TEXT, "fail_on_negative").click()
    calls = text_of(browser, "#calls")
    assert calls.count("fc-") == 2
    failure = text_of(browser, ".failure pre")
    assert "ValueError: negative input -5 refused" in failure and "Traceback" in failure
    shot(browser, "function")

    # The failed call's inputs.
    browser.find_element(By.CSS_SELECTOR, ".failure a").click()
    assert "failure" in text_of(browser, "#inputs")
    assert "negative input -5 refused" in text_of(browser, "#inputs")
    shot(browser, "call")

    # A map's inputs, each with its status.
    browser.back()
    browser.back()
    browser.find_element(By.LINK_TEXT, "square").click()
    browser.find_element(By.CSS_SELECTOR, "#calls a").click()
    assert text_of(browser, "#inputs").count("success") == 5

    # The container of `say`: a line it prints now arrives in the open page.
    browser.get(browser.current_url.split("/dashboard/")[0] + "/dashboard/containers")
    shot(browser, "containers")
    rows = browser.find_elements(By.CSS_SELECTOR, "#containers tbody tr")
    row = next(r for r in rows if "say" in r.text)
    row.find_element(By.CSS_SELECTOR, "a").click()
    assert "first line" in text_of(browser, "#logs")
    marker = f"live-{uuid.uuid4().hex[:8]}"
    assert say.remote(marker) == marker
    assert wait_for(lambda: marker in text_of(browser, "#logs"), timeout=60), text_of(browser, "#logs")
    shot(browser, "container")

    # Storage and web pages render.
    base = browser.current_url.split("/dashboard/")[0]
    browser.get(base + "/dashboard/storage")
    assert "values are never shown" in browser.page_source
    shot(browser, "storage")

    # Roll back to version 1 from the app's page.
    browser.get(base + "/dashboard/")
    browser.find_element(By.LINK_TEXT, name).click()
    browser.find_element(By.CSS_SELECTOR, 'button.rollback[data-version="1"]').click()
    browser.switch_to.alert.accept()
    assert wait_for(lambda: "rolled back to v1: now version 3" in text_of(browser, "#rollback-result"),
                    timeout=120), text_of(browser, "#rollback-result")
    assert wait_for(lambda: modal.Function.from_name(name, "version").remote() == 1, timeout=120)
    browser.refresh()
    assert "v3 current" in text_of(browser, "#versions")
    assert "rollback to v1" in text_of(browser, "#versions")


def test_dashboard_is_closed_without_a_login(private_control_plane, browser):
    url = private_control_plane.url
    # No cookie: no page, no data; the API token is not accepted by the pages either.
    assert requests.get(f"{url}/dashboard/", timeout=30).status_code == 401
    token = (private_control_plane.home / "token").read_text().strip()
    assert requests.get(f"{url}/dashboard/containers", cookies={"shoal_dashboard": token},
                        timeout=30).status_code == 401
    link = login_url()
    # The link works once: a second browser (or whoever saw the link later) gets nothing.
    first = requests.get(link, timeout=30, allow_redirects=False)
    assert first.status_code == 303
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert requests.get(link, timeout=30).status_code == 403
    session = first.cookies["shoal_dashboard"]
    assert requests.get(f"{url}/dashboard/", cookies={"shoal_dashboard": session}, timeout=30).status_code == 200
    # An action needs the page's own header (a form posted from elsewhere has none).
    assert requests.post(f"{url}/dashboard/apps/ap-x/rollback", json={"version": 1},
                         cookies={"shoal_dashboard": session}, timeout=30).status_code == 403
    browser.get(f"{url}/dashboard/")
    assert "Not logged in" in browser.page_source


def logged_in() -> requests.Session:
    session = requests.Session()
    assert session.get(login_url(), timeout=30).status_code == 200
    return session


def test_storage_page_lists_names_never_values(private_control_plane):
    secret_value = f"s3cr3t-{uuid.uuid4().hex}"
    assert run_cli("secret", "create", "dash-secret", f"PASSWORD={secret_value}").returncode == 0
    d = modal.Dict.from_name("dash-dict", create_if_missing=True)
    d["a"], d["b"] = 1, 2
    q = modal.Queue.from_name("dash-queue", create_if_missing=True)
    q.put(1, partition="p1")
    q.put_many([2, 3], partition="p2")
    page = logged_in().get(f"{private_control_plane.url}/dashboard/storage", timeout=30).text
    assert "dash-secret" in page and secret_value not in page
    assert "<td>dash-dict</td><td>2</td>" in page
    assert "<td>dash-queue</td><td>3</td><td>2</td>" in page


def test_a_spawned_call_by_id(private_control_plane, tmp_path):
    name = f"dash-{uuid.uuid4().hex[:6]}"
    deploy(tmp_path, name, 1)
    call = modal.Function.from_name(name, "fail_on_negative").spawn(-7)
    with pytest.raises(Exception, match="negative input -7 refused"):
        call.get(timeout=60)
    page = logged_in().get(
        f"{private_control_plane.url}/dashboard/calls/{call.object_id}", timeout=30).text
    assert "spawn" in page and "ValueError: negative input -7 refused" in page
