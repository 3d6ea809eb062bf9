"""The playground page and /explanations, end to end: a real TorchServe (token authorisation on)
behind the nginx front that adds the inference key, driven by headless Chromium through
Selenium. The page must show the label the API gives for the same bytes, render the heat map,
and say clearly what went wrong for a file that is not an image.

Set GAMEART_SCREENSHOTS=<dir> to keep the screenshots (docs/images/ holds the README's).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

from gameart.ops.nginx import (
    KEY_INCLUDE,
    FrontSpec,
    start_front,
    start_key_watcher,
    stop_front,
)
from gameart.ops.ports import free_ports
from tests import components, torchserve
from tests.helpers import real_images

pytestmark = pytest.mark.integration
MODELS = ("small", "small_onnx")


@dataclass
class Stack:
    server: torchserve.RunningServer
    front: str
    spec: FrontSpec


@pytest.fixture(scope="module")
def stack(tmp_path_factory, exported_small):
    components.require("nginx")
    root = tmp_path_factory.mktemp("playground")
    store = root / "store"
    torchserve.archive(exported_small.out_dir, store, "small", "torchscript")
    torchserve.archive(exported_small.out_dir, store, "small_onnx", "onnx")
    # each model also as <model>-explain with one worker, where the front sends explanations
    server = torchserve.start(root / "run", store, explain_pools=True)
    (port,) = free_ports(1)
    spec = FrontSpec(
        (server.client.endpoints.inference_host_port,),
        listen=f"127.0.0.1:{port}",
        rate_per_s=50,
        burst=50,
        # the tests here send explanations back to back; the default 1/s, burst 5, would answer
        # some of them 429 depending on the order the tests ran in
        explain_rate_per_s=50,
        explain_burst=50,
        prefix=root / "nginx",
        key_run_dir=server.run_dir,
        models=MODELS,
        explain_pools=True,
    )
    try:
        start_front(spec)
        start_key_watcher(spec)
        yield Stack(server, f"http://127.0.0.1:{port}", spec)
    finally:
        stop_front(spec.prefix)
        server.stop()


def post(stack: Stack, kind: str, model: str, body: bytes, **fields) -> requests.Response:
    """Through the front, with no key: nginx adds it. Options go as form fields (TorchServe
    hands the handler those, not query parameters), as the page sends them."""
    if fields:
        form = {"data": ("image", body), **{k: (None, str(v)) for k, v in fields.items()}}
        return requests.post(f"{stack.front}/{kind}/{model}", files=form, timeout=120)
    return requests.post(
        f"{stack.front}/{kind}/{model}",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
        timeout=120,
    )


# ---- the API the page uses -----------------------------------------------------------------
@pytest.mark.parametrize(("model", "method"), [("small", "grad-cam"), ("small_onnx", "occlusion")])
def test_explanations_answer_like_predictions_with_a_heat_map(stack, exported_small, model, method):
    photo = real_images()[1].read_bytes()
    predicted = post(stack, "predictions", model, photo)
    explained = post(stack, "explanations", model, photo)
    assert predicted.status_code == 200 and explained.status_code == 200, explained.text
    answer, explanation = predicted.json(), explained.json()
    assert explanation["label"] == answer["label"] and explanation["top_k"] == answer["top_k"]
    body = explanation["explanation"]
    assert body["method"] == method and body["target"] == answer["label"]
    size = exported_small.meta.preprocess.input_size
    assert Image.open(io.BytesIO(base64.b64decode(body["overlay_png"]))).size == (size, size)
    chosen = post(stack, "explanations", model, photo, target="delta").json()
    assert chosen["explanation"]["target"] == "delta"


def test_explanations_run_in_their_own_workers(stack):
    """Through the front, explanations reach <model>-explain (one worker of its own) and
    predictions the model's workers, as TorchServe's access log records them."""
    client = stack.server.client
    assert sorted(client.models()) == sorted([*MODELS, *(f"{m}-explain" for m in MODELS)])
    assert len(client.describe("small-explain")["workers"]) == 1
    photo = real_images()[3].read_bytes()
    assert post(stack, "explanations", "small", photo).status_code == 200
    assert post(stack, "predictions", "small", photo).status_code == 200
    access = (stack.server.log_dir / "access_log.log").read_text().splitlines()
    assert any('"POST /explanations/small-explain HTTP' in line for line in access)
    assert not any('"POST /explanations/small HTTP' in line for line in access)
    assert any('"POST /predictions/small HTTP' in line for line in access)


def test_a_client_cannot_make_a_prediction_an_explanation_or_use_a_pool(stack):
    """Only the front's /explanations route (rate-limited, sent to the pool) explains: a client's
    own `Explain: True` on a prediction does nothing. TorchServe 0.12 already keeps it from the
    handler (checked directly); the front strips it as well, for a TorchServe that would not.
    Pools take no predictions."""
    photo = real_images()[0].read_bytes()
    spoofed = requests.post(
        f"{stack.front}/predictions/small",
        data=photo,
        headers={"Content-Type": "application/octet-stream", "Explain": "True"},
        timeout=60,
    )
    assert spoofed.status_code == 200 and "explanation" not in spoofed.json()
    assert post(stack, "predictions", "small-explain", photo).status_code == 404


def test_stopping_the_front_stops_its_key_watcher(stack, tmp_path):
    import psutil

    (port,) = free_ports(1)
    spec = dataclasses.replace(stack.spec, listen=f"127.0.0.1:{port}", prefix=tmp_path / "nginx")
    start_front(spec)
    watcher = start_key_watcher(spec)
    published = Path((spec.prefix / "playground.path").read_text())
    assert psutil.pid_exists(watcher) and (published / "index.html").is_file()
    stop_front(spec.prefix)
    psutil.Process(watcher).wait(timeout=10)  # raises if it is still running
    assert not published.exists()
    assert requests.get(f"{stack.front}/playground/", timeout=10).status_code == 200  # the other


def test_explanations_have_a_rate_limit_of_their_own(stack, tmp_path):
    """A second front with the explanation limit at 1 a minute, burst 1: of six explanations
    sent one after another, the first two pass and the rest get 429, while predictions sent
    between them are all served (their limit is another)."""
    (port,) = free_ports(1)
    spec = dataclasses.replace(
        stack.spec,
        listen=f"127.0.0.1:{port}",
        prefix=tmp_path / "nginx",
        explain_rate_per_s=1 / 60,
        explain_burst=1,
    )
    start_front(spec)
    try:
        limited = Stack(stack.server, f"http://127.0.0.1:{port}", spec)
        photo = real_images()[1].read_bytes()
        explained, predicted = [], []
        for _ in range(6):
            explained.append(post(limited, "explanations", "small", photo).status_code)
            predicted.append(post(limited, "predictions", "small", photo).status_code)
        assert explained == [200, 200, 429, 429, 429, 429], explained
        assert predicted == [200] * 6
    finally:
        stop_front(spec.prefix)


def test_bad_explanation_requests_get_the_same_4xx_as_predictions(stack):
    for body, status, kind in ((b"plain text, no image", 400, "NotAnImage"), (b"", 400, None)):
        predicted = post(stack, "predictions", "small", body)
        explained = post(stack, "explanations", "small", body)
        assert predicted.status_code == explained.status_code == status
        if kind:
            assert explained.json()["type"] == kind
    photo = real_images()[0].read_bytes()
    unknown = post(stack, "explanations", "small", photo, target="omega")
    assert unknown.status_code == 400 and "target" in unknown.json()["message"]
    # the server behind still answers good requests
    assert post(stack, "predictions", "small", photo).status_code == 200


def test_the_front_adds_the_key_and_follows_a_rotation(stack):
    photo = real_images()[0].read_bytes()
    direct = requests.post(
        f"{stack.server.client.endpoints.inference}/predictions/small", data=photo, timeout=60
    )
    assert direct.status_code in (400, 401), "TorchServe must refuse a request without its key"
    assert post(stack, "predictions", "small", photo).status_code == 200
    include = stack.spec.prefix / KEY_INCLUDE
    assert include.stat().st_mode & 0o077 == 0, "the key must not be readable by others"
    before = include.read_text()

    stack.server.client.renew_key("inference")  # the old key stops working now
    deadline = time.monotonic() + 15
    while include.read_text() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert include.read_text() != before, "the watcher did not pick up the new key"
    time.sleep(1.0)  # nginx's reload: old workers finish, new ones use the new key
    codes = [post(stack, "predictions", "small", photo).status_code for _ in range(5)]
    assert codes == [200] * 5


def test_the_page_is_served_without_secrets_and_with_a_strict_policy(stack):
    page = requests.get(f"{stack.front}/playground/", timeout=10)
    assert page.status_code == 200 and "gameart-serve playground" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    key = stack.server.client.headers("inference")["Authorization"].split()[-1]
    for name in ("", "app.js", "style.css", "config.json"):
        text = requests.get(f"{stack.front}/playground/{name}", timeout=10).text
        assert key not in text
    assert requests.get(f"{stack.front}/playground/config.json", timeout=10).json() == {
        "models": list(MODELS)
    }
    assert requests.get(f"{stack.front}/", allow_redirects=False, timeout=10).status_code == 302


# ---- in a real browser ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    paths = components.require("chromium", "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths["chromium"]
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,1000",
    ):
        options.add_argument(argument)
    service = Service(executable_path=paths["chromedriver"])
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GAMEART_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def open_page(driver, stack: Stack, model: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{stack.front}/playground/")
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model").is_displayed())
    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    return By, WebDriverWait


def test_the_page_shows_the_apis_answer_and_where_the_model_looked(stack, browser, tmp_path):
    By, WebDriverWait = open_page(browser, stack, "small")
    image = real_images()[2]
    api = post(stack, "predictions", "small", image.read_bytes(), top_k=5).json()

    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "label").text)
    assert browser.find_element(By.ID, "label").text == api["label"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#bars li")
    shown = [(row.find_element(By.CLASS_NAME, "name").text, row.text) for row in rows]
    assert [name for name, _ in shown] == [entry["label"] for entry in api["top_k"]]
    for (_, text), entry in zip(shown, api["top_k"], strict=True):
        assert f"{entry['probability'] * 100:.1f}%" in text
    assert browser.find_element(By.ID, "latency").text.endswith(" ms")

    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "overlay-figure").is_displayed()
    )
    overlay = browser.find_element(By.ID, "overlay")
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return arguments[0].naturalWidth", overlay) > 0
    )
    assert "grad-cam" in browser.find_element(By.ID, "overlay-caption").text
    screenshot(browser, "playground-answer", tmp_path)

    browser.find_element(By.ID, "explain-toggle").click()  # off: the overlay goes away
    assert not browser.find_element(By.ID, "overlay-figure").is_displayed()
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_the_page_says_what_is_wrong_with_a_file_that_is_not_an_image(stack, browser, tmp_path):
    By, WebDriverWait = open_page(browser, stack, "small_onnx")
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my notes, not a picture\n")
    browser.find_element(By.ID, "file").send_keys(str(notes))
    error = browser.find_element(By.ID, "error")
    WebDriverWait(browser, 30).until(lambda d: error.is_displayed())
    assert "not an image" in error.text
    assert not browser.find_element(By.ID, "answer").is_displayed()
    screenshot(browser, "playground-error", tmp_path)


def test_the_page_works_at_phone_width_and_from_the_keyboard(stack, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    browser.set_window_size(390, 844)
    try:
        By, WebDriverWait = open_page(browser, stack, "small")
        from selenium.webdriver.common.action_chains import ActionChains

        reached = []
        for _ in range(6):  # the drop zone is reachable with Tab
            ActionChains(browser).send_keys(Keys.TAB).perform()
            reached.append(browser.switch_to.active_element.get_attribute("id"))
            if reached[-1] == "drop":
                break
        assert "drop" in reached, reached
        browser.find_element(By.ID, "file").send_keys(str(real_images()[0]))
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "label").text)
        WebDriverWait(browser, 60).until(
            lambda d: d.find_element(By.ID, "overlay-figure").is_displayed()
        )
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"the page scrolls sideways by {overflow}px at phone width"
        screenshot(browser, "playground-phone", tmp_path)
    finally:
        browser.set_window_size(1200, 1000)
