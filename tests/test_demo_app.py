"""`timm-isomax demo`, tested as a person uses it: the command serves the page, headless Chromium uploads a real MNIST
digit and a real notMNIST letter and clicks an example, and what the page says (verdicts, classes, scores) must be
what the library says for the same images; gradio_client reads the same numbers from the app's API. Also: the
percentile summary the trainer records (timm_isomax.ood.score_summary), and one-line errors for bad input.

The browser test needs Debian's `chromium` and `chromium-driver` (.ci/run installs them) and the `app` extra; outside
CI it skips where they are missing. TIMM_ISOMAX_DEMO_SCREENSHOT=PATH also writes its screenshot there (docs/demo.png).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

import timm_isomax
from tests.conftest import assert_one_line_error
from tests.mnist_models import one_thread, trained_mnist_models
from timm_isomax.app import image_digest
from timm_isomax.evaluation import load_eval_set, load_model
from timm_isomax.hub import read_config, save_pretrained
from timm_isomax.ood.score_summary import share_below, summary_problem

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# the flags that run Chromium headless as root here, with nothing fetched on its own (updates, sync, QUIC probes)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900")
SCORED_IMAGES = 200  # per set, for the page's histograms: enough to draw, quick to score


def _missing_or_skip(what: str, missing: bool) -> None:
    # CI installs the browser and the app extra (.ci/run, scripts/in_venv.sh): there, missing is a failure
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{what} (CI installs it)")


@pytest.fixture(scope="module")
def demo_models(shared_data, tmp_path_factory):
    """The test session's MNIST SoftMax and IsoMax+ folders, the IsoMax+ one with the threshold its run fitted put
    back (the shared fixture clears it for the calibration tests): what a user's finetune run leaves."""
    folders = trained_mnist_models(shared_data)
    isomaxplus = tmp_path_factory.mktemp("demo") / "mnist_isomaxplus"
    shutil.copytree(folders["isomaxplus"], isomaxplus)
    evaluation = json.loads((isomaxplus / "training" / "evaluation.json").read_text())
    config = json.loads((isomaxplus / "config.json").read_text())
    for block in (config["isomax"], config["model_args"]["ood_config"]):
        block.update({key: evaluation[key] for key in ("threshold", "tpr", "fitted_on")})
    (isomaxplus / "config.json").write_text(json.dumps(config, indent=2))
    return {"softmax": folders["softmax"], "isomaxplus": isomaxplus}


def _row(shared_data: Path, name: str, row: int):
    return load_eval_set(str(shared_data / name), "test").dataset[row]["image"]


@pytest.mark.slow
def test_the_trainer_records_the_id_score_percentiles_with_its_threshold(demo_models, tmp_path):
    model = load_model(str(demo_models["isomaxplus"]))
    config = model.ood_config
    summary = config["id_scores"]
    assert summary_problem(summary) is None and summary["score"] == config["score"] == "mds"
    assert summary["threshold"] == config["threshold"] and summary["images"] == 500  # the run's validation images
    # the threshold accepts 95% of those images: the recorded percentiles say so too (to within one image, and the
    # straight lines between percentiles)
    assert 1 - share_below(summary, config["threshold"]) == pytest.approx(config["tpr"], abs=0.01)
    # the SoftMax run keeps its score, threshold and percentiles in training/evaluation.json
    evaluation = json.loads((demo_models["softmax"] / "training" / "evaluation.json").read_text())
    assert evaluation["id_scores"]["score"] == "msp" and evaluation["id_scores"]["threshold"] == evaluation["threshold"]
    # a re-export (what `timm-isomax push` writes) keeps the summary; a broken one is refused in one line on load
    again = save_pretrained(model, tmp_path / "again", label_names=[str(i) for i in range(10)])
    assert read_config(again)["model_args"]["ood_config"]["id_scores"] == summary
    broken = json.loads((again / "config.json").read_text())
    broken["model_args"]["ood_config"]["id_scores"]["percentiles"][3] = 1e9  # no longer non-decreasing
    (again / "config.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="id_scores percentiles must not decrease"):
        read_config(again)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_server(demo_models, shared_data):
    """`timm-isomax demo` with both models, MNIST as ID and notMNIST as OOD, as a subprocess; yields its URL."""
    pytest.importorskip("gradio", reason="the app extra is not installed: pip install 'timm-isomax[app]'")
    command = [sys.executable, "-m", "timm_isomax", "demo", "--model", str(demo_models["softmax"]),
               "--model", str(demo_models["isomaxplus"]), "--id-dataset", str(shared_data / "mnist"),
               "--ood-dataset", str(shared_data / "notmnist"), "--limit", str(SCORED_IMAGES), "--port", str(_free_port())]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines, started = [], time.monotonic()
    try:
        while time.monotonic() - started < 300:
            line = server.stdout.readline()
            if not line:
                pytest.fail("timm-isomax demo stopped before serving:\n" + "".join(lines[-30:]))
            lines.append(line)
            if line.startswith("timm-isomax demo: open "):
                yield line.split()[3]
                return
        pytest.fail("timm-isomax demo did not serve within 300 s:\n" + "".join(lines[-30:]))
    finally:
        server.terminate()
        server.wait(timeout=30)


def _expected(folder: Path, image) -> dict:
    """What the library says about ``image`` for the model in ``folder``: score, verdict, top class."""
    model = load_model(str(folder))
    with one_thread():
        if getattr(model, "ood_config", None):  # IsoMax: its own score and threshold
            prediction = timm_isomax.predict(model, image)[0]
        else:  # SoftMax: the score and threshold its run recorded in training/evaluation.json
            evaluation = json.loads((folder / "training" / "evaluation.json").read_text())
            prediction = timm_isomax.predict(model, image, threshold=evaluation["threshold"], score=evaluation["score"])[0]
    return dict(score=prediction.score, is_ood=prediction.is_ood, label=prediction.label)


def _browser(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra has it)")
    _missing_or_skip(f"no Chromium at {CHROMIUM} / {CHROMEDRIVER}: apt-get install chromium chromium-driver",
                     not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()))
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _cards_for(driver, digest: str, count: int, timeout: float = 60):
    """The model cards once all ``count`` show the result for the image with ``digest``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        cards = d.find_elements(By.CSS_SELECTOR, ".tim-card")
        return cards if len(cards) == count and all(c.get_attribute("data-image") == digest for c in cards) else False

    return WebDriverWait(driver, timeout).until(ready)


def _wait_for(driver, selector: str, timeout: float = 60):
    """The element once the page has drawn it (gradio builds the page in the browser, after the first load)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, selector)))


def _read_card(card) -> dict:
    """What a person reads off a card: the verdict badge, the first class, and the score."""
    from selenium.webdriver.common.by import By

    return dict(badge=card.find_element(By.CSS_SELECTOR, ".tim-verdict").text,
                label=card.find_element(By.CSS_SELECTOR, ".tim-label").text,
                score=float(card.get_attribute("data-score")))


@pytest.mark.slow
def test_the_page_in_a_browser_says_what_the_library_says(demo_server, demo_models, shared_data, tmp_path):
    from selenium.webdriver.common.by import By

    digit, letter = _row(shared_data, "mnist", 0), _row(shared_data, "notmnist", 0)
    driver = _browser(tmp_path)
    try:
        driver.get(demo_server)
        order = ["softmax", "isomaxplus"]
        # an example from the gallery (the first OOD one: notMNIST) goes through the same path as an upload
        _wait_for(driver, "#demo-examples button.thumbnail-item")
        examples = driver.find_elements(By.CSS_SELECTOR, "#demo-examples button.thumbnail-item")
        assert len(examples) == 8, "4 examples of each set"
        examples[4].click()
        first_letter = load_eval_set(str(shared_data / "notmnist"), "test", limit=SCORED_IMAGES).dataset[0]["image"]
        cards = _cards_for(driver, image_digest(first_letter), len(order))
        assert [_read_card(c)["score"] for c in cards] == pytest.approx(
            [_expected(demo_models[head], first_letter)["score"] for head in order], rel=1e-5, abs=1e-6)
        for name, image in (("digit", digit), ("letter", letter)):
            path = tmp_path / f"{name}.png"
            image.save(path)
            clear = driver.find_elements(By.CSS_SELECTOR, "#demo-image button[aria-label='Remove Image']")
            if clear:  # the image box holds the last image: clear it, as a person would, to upload the next
                clear[0].click()
            _wait_for(driver, "#demo-image input[type=file]").send_keys(str(path))
            cards = _cards_for(driver, image_digest(image), len(order))
            for head, card in zip(order, cards):
                seen, expected = _read_card(card), _expected(demo_models[head], image)
                assert seen["score"] == pytest.approx(expected["score"], rel=1e-5, abs=1e-6), (name, head)
                assert seen["badge"] == ("OUT-OF-DISTRIBUTION" if expected["is_ood"] else "IN-DISTRIBUTION"), (name, head)
                assert seen["label"] == expected["label"], (name, head)
        # the IsoMax+ model calls the letter out-of-distribution and the digit in: what this demo is for
        assert _expected(demo_models["isomaxplus"], letter)["is_ood"] and not _expected(demo_models["isomaxplus"], digit)["is_ood"]
        # the page says where its ID histogram and threshold come from (the screenshot: the letter uploaded last)
        text = driver.find_element(By.CSS_SELECTOR, "body").text
        assert "recorded with the model at training time: 500 ID validation images" in text
        assert "it accepts 95% of the ID validation images (TPR 95%)" in text
        screenshot = tmp_path / "demo.png"
        driver.save_screenshot(str(screenshot))
        if os.environ.get("TIMM_ISOMAX_DEMO_SCREENSHOT"):
            shutil.copyfile(screenshot, os.environ["TIMM_ISOMAX_DEMO_SCREENSHOT"])
        assert screenshot.stat().st_size > 10_000  # a drawn page, not a blank one
        # offline: the page fetched nothing from anywhere but the demo's own server
        requests = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
        urls = {urlparse(m["params"]["request"]["url"]) for m in requests if m["method"] == "Network.requestWillBeSent"}
        network = [u for u in urls if u.scheme in ("http", "https", "ws", "wss")]  # not chrome://, data:, blob:
        outside = sorted(u.geturl() for u in network if u.hostname != "127.0.0.1")
        assert len(network) > 5 and not outside, outside
    finally:
        driver.quit()


@pytest.mark.slow
def test_the_api_returns_the_library_numbers(demo_server, demo_models, shared_data, tmp_path):
    from gradio_client import Client, handle_file

    letter = _row(shared_data, "notmnist", 1)
    letter.save(tmp_path / "letter.png")
    *cards, numbers = Client(demo_server, verbose=False).predict(handle_file(str(tmp_path / "letter.png")),
                                                                 api_name="/classify")
    assert len(cards) == 2 and all("tim-card" in card for card in cards)
    for result, head in zip(numbers["models"], ["softmax", "isomaxplus"]):
        expected = _expected(demo_models[head], letter)
        assert result["image_sha256"] == image_digest(letter)
        assert result["score"] == pytest.approx(expected["score"], rel=1e-5, abs=1e-6)
        assert result["is_ood"] == expected["is_ood"] and result["top_classes"][0]["label"] == expected["label"]
        assert sum(c["probability"] for c in result["top_classes"]) <= 1 + 1e-6


def test_bad_input_is_one_line(shared_data, tmp_path, capsys):
    pytest.importorskip("gradio", reason="the app extra is not installed")
    from timm_isomax.cli import main

    def refused(*args: str) -> str:  # in this process: one import of torch and gradio for the three
        assert main(["demo", *args]) == 2
        return capsys.readouterr().err

    assert_one_line_error(refused("--model", "resnet5O_isomaxplus"), "unknown model 'resnet5O_isomaxplus'")
    assert_one_line_error(refused("--model", str(tmp_path)), "holds no config.json")
    # a dataset with no image column: a label-only Parquet split
    import datasets

    (tmp_path / "labels").mkdir()
    datasets.Dataset.from_dict({"label": [0, 1]}).to_parquet(str(tmp_path / "labels" / "test.parquet"))
    capsys.readouterr()
    assert_one_line_error(refused("--model", "resnet10t_isomaxplus", "--id-dataset", str(tmp_path / "labels")), "has no images")


def test_without_gradio_it_says_how_to_get_it():
    # gradio hidden from the import system, as where the app extra is not installed
    code = ("import sys; sys.modules['gradio'] = None; from timm_isomax.cli import main; "
            "sys.exit(main(['demo', '--model', 'resnet10t_isomaxplus']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "needs gradio, which is not installed: pip install 'timm-isomax[app]'")
