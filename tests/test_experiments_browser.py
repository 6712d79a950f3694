"""The study page in headless Chromium, driven from outside by a scripted participant through the
Chrome DevTools protocol: consent, instructions, every trial by clicking the class buttons, the
block breaks, the CSV download and the POST. The downloaded responses go through the analysis,
which must report exactly the accuracy each participant was told to produce.

Chromium: Debian's `chromium`; tests/browser/setup_chromium.sh installs it (run as root)."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from browser.cdp import Browser, find_chromium
from experiments_data import make_dataset, upload_sets
from s3server import moto_s3_server

from lwise.experiments.analysis import analyse, read_responses
from lwise.experiments.study import build_study
from lwise.humans.trials import read_trials
from lwise.publish.s3 import UploadConfig
from lwise.publish.site import publish_site

SETUP = Path(__file__).parent / "browser" / "setup_chromium.sh"


@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if exe is None:
        proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True)
        if proc.returncode == 77:
            pytest.skip(f"chromium cannot be installed here: {proc.stderr.strip()[-300:]}")
        assert proc.returncode == 0, proc.stderr
        exe = find_chromium()
    assert exe, "setup_chromium.sh succeeded but no chromium on PATH"
    return exe


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self):  # noqa: N802
        n = int(self.headers.get("Content-Length", 0))
        type(self).bodies.append(self.rfile.read(n))
        self.send_response(200)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    _Collector.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/responses", _Collector.bodies
    server.shutdown()


def run_participant(
    browser: Browser, index: Path | str, pid: str, trials: pd.DataFrame, plan: list[bool]
):
    """Go through the page (a file, or a URL) as participant `pid`, answering trial i
    correctly iff plan[i]."""
    page = browser.open(f"{index if isinstance(index, str) else index.as_uri()}?participant={pid}")
    page.wait_for("document.readyState === 'complete' && !!document.getElementById('agree')")
    page.click("#agree")
    page.click("#consent-continue")
    page.click("#instructions-continue")
    assert page.js("document.getElementById('participant-id').value") == pid
    page.click("#start")
    for i, trial in enumerate(trials.to_dict("records")):
        state = page.wait_for(
            "document.querySelector('#screen-break.active') ? 'break' : "
            "(document.querySelector('#screen-error.active') ? "
            "'error: ' + document.getElementById('error-text').textContent : "
            "(document.querySelector('#choices button:not([disabled])') ? 'trial' : ''))"
        )
        if state == "break":
            page.click("#continue")
            state = page.wait_for(
                "document.querySelector('#choices button:not([disabled])') ? 'trial' : ''"
            )
        assert state == "trial", state
        shown = page.js("document.getElementById('stimulus').getAttribute('src')")
        assert shown == trial["stimulus"], (i, shown, trial["stimulus"])
        choices = page.js(
            "Array.from(document.querySelectorAll('#choices button')).map(b => b.dataset.choice)"
        )
        answer = trial["class"] if plan[i] else next(c for c in choices if c != trial["class"])
        page.click(f"#choices button[data-choice={json.dumps(answer)}]")
    page.wait_for("!!document.querySelector('#screen-end.active')")
    page.click("#download")
    return page


def wait_for_file(folder: Path, pattern: str, timeout: float = 20.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.glob(pattern) if not p.name.endswith(".crdownload")]
        if done and done[0].stat().st_size > 0:
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no {pattern} downloaded into {folder}: {list(folder.iterdir())}")


def test_scripted_participants_produce_the_accuracy_they_were_told(chromium, tmp_path, endpoint):
    url, received = endpoint
    data = make_dataset(tmp_path / "ds", n_train=12, n_val=6)
    settings = {
        "participants": 2,
        "images": "copy",
        "conditions": {"control": 1, "lwise": 1},
        "learning": {"training_blocks": 2, "trials_per_class": 1, "test_blocks": 1,
                     "test_per_class": 2, "catch_trial": True, "stimulus_duration_ms": 60,
                     "max_difficulty": [0.25], "epsilon_taper": [2]},
        "page": {"fixation_ms": 20, "feedback_ms": 50, "post_stimulus_ms": 20,
                 "response_timeout_ms": 20000, "post_endpoint": url},
    }  # fmt: skip
    study = tmp_path / "study"
    trials = build_study(
        data["difficulty_csv"], data["imagefolder"], data["uploads"], data["stimuli_root"],
        study, settings, dataset="ds",
    )  # fmt: skip
    index = study / "web" / "index.html"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    # Test-block accuracy each participant is told to produce: 4 of 6 and 6 of 6 (the catch
    # trial, answered wrongly, must not count); training answers alternate.
    targets = {"p001": 4, "p002": 6}
    with Browser(chromium, tmp_path / "profile") as browser:
        browser.send(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True},
        )
        for pid, n_right in targets.items():
            mine = trials[trials["participant"] == pid].reset_index(drop=True)
            test_rows = mine.index[(mine["phase"] == "test") & (mine["catch"] == 0)]
            assert len(test_rows) == 6
            plan = [i % 2 == 0 for i in range(len(mine))]
            for j, row in enumerate(test_rows):
                plan[row] = j < n_right
            for row in mine.index[mine["catch"] == 1]:
                plan[row] = False
            page = run_participant(browser, index, pid, mine, plan)
            wait_for_file(downloads, f"responses_{pid}_*.csv")
            page.wait_for("/sent|failed|confirmed/.test(document.getElementById('post-status')"
                          ".textContent)")  # fmt: skip
            assert (
                page.js("document.getElementById('post-status').textContent") == "Responses sent."
            )

    files = sorted(downloads.glob("responses_*.csv"))
    assert len(files) == 2
    # The trials format the evaluation reads, and the same bytes that were POSTed.
    for f in files:
        read_trials(f)
    assert sorted(received) == sorted(f.read_bytes() for f in files)
    responses = read_responses(downloads)
    assert len(responses) == len(trials)
    assert (responses["rt"] > 0).all()
    assert responses.groupby("participant")["t_response_ms"].is_monotonic_increasing.all()
    conditions = trials.groupby("participant")["condition"].first()
    table = analyse(downloads, tmp_path / "analysis", {"n_boot": 200}).set_index("condition")
    for pid, n_right in targets.items():
        assert table.loc[conditions[pid], "accuracy"] == pytest.approx(n_right / 6)
        assert table.loc[conditions[pid], "n_trials"] == 6
    per = pd.read_csv(tmp_path / "analysis" / "participants.csv").set_index("participant")
    assert (per["catch_correct"] == 0).all() and (per["training_s"] > 0).all()
    # What the page recorded about each trial matches the trial list.
    merged = responses.merge(trials, on=["participant", "trial"], suffixes=("", "_list"))
    for col in ("image", "block", "source_block", "set", "stimulus", "class"):
        assert (merged[col].astype(str) == merged[f"{col}_list"].astype(str)).all(), col


def test_the_published_page_runs_from_the_bucket(chromium, tmp_path):
    """The study as publish_study uploads it: opened from the bucket over HTTP, its scripts,
    trial list and images (the image sets' own objects) load and a participant finishes."""
    with moto_s3_server() as endpoint:
        run = uuid.uuid4().hex[:8]

        def cfg_for(name: str) -> UploadConfig:
            options = {"bucket": "lwise-{dataset}-{set}-{run}", "endpoint_url": endpoint,
                       "public_read": True, "backoff_s": 0.01}  # fmt: skip
            return UploadConfig.from_config(options, fields={"dataset": "ds", "set": name,
                                                             "run": run})  # fmt: skip

        data = make_dataset(tmp_path / "ds", n_train=6, n_val=4, epsilons=(2,))
        uploads = upload_sets(tmp_path / "ds", data, cfg_for)
        settings = {
            "participants": 1, "images": "url", "conditions": {"lwise": 1},
            "learning": {"training_blocks": 2, "trials_per_class": 1, "test_blocks": 1,
                         "test_per_class": 2, "max_difficulty": [0.5], "epsilon_taper": [2]},
            "page": {"fixation_ms": 20, "feedback_ms": 50, "response_timeout_ms": 20000},
        }  # fmt: skip
        study = tmp_path / "study"
        trials = build_study(
            data["difficulty_csv"], data["imagefolder"], uploads, data["stimuli_root"], study,
            settings, dataset="ds",
        )  # fmt: skip
        assert trials["stimulus"].str.startswith(f"{endpoint}/lwise-ds-").all()
        assert "logit_eps2" in set(trials["set"])
        publish_site(study, cfg_for("study"), tmp_path / "manifest.csv", tmp_path / "m.json")
        manifest = pd.read_csv(tmp_path / "manifest.csv").set_index("path")
        page_url = manifest.loc["web/index.html", "url"]
        assert page_url.startswith(f"{endpoint}/lwise-ds-study-{run}/")

        downloads = tmp_path / "downloads"
        downloads.mkdir()
        with Browser(chromium, tmp_path / "profile") as browser:
            browser.send(
                "Browser.setDownloadBehavior",
                {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True},
            )
            page = run_participant(browser, page_url, "p001", trials, [True] * len(trials))
            loaded = page.js(
                "performance.getEntriesByType('resource').map(e => e.name)"
                ".filter(n => n.endsWith('.png'))"
            )
            wait_for_file(downloads, "responses_p001_*.csv")
    assert set(loaded) == set(trials["stimulus"])  # every image came from the image sets
    responses = read_responses(downloads)
    assert len(responses) == len(trials) and responses["correct"].all()
    assert (responses["stimulus"] == trials["stimulus"]).all()
