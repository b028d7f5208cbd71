"""The Gradio demo in a real headless Chromium: `syncdreamer demo` on a free local port with the tiny random pipeline,
the example inputs uploaded, the video played back with its audio; bad input shows a readable message.

Needs Debian's chromium (`apt-get install -y chromium`; `.ci/run` installs it) and playwright's Python package,
pointed at that binary: nothing downloads a browser. A missing browser fails the test."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "docs" / "demo.png"
SECONDS = 4.0  # examples/speech.wav
FPS = 25


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url():
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "syncdreamer_hf.cli",
        "demo",
        "--model",
        str(REPO / "pipelines" / "syncdreamer-tiny-random"),
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the demo did not start:\n{server.stdout.read() if server.poll() is not None else ''}"
                )
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.is_file(), "the browser test needs Debian's chromium: apt-get update && apt-get install -y chromium"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 1000},
        )
        yield context
        context.close()


def open_demo(browser, url, image: Path, audio: Path, steps: int = 2):
    page = browser.new_page()
    page.goto(url, wait_until="networkidle")
    page.locator("#reference-image input[type=file]").set_input_files(str(image))
    page.locator("#driving-audio input[type=file]").set_input_files(str(audio))
    page.locator("#driving-audio audio").first.wait_for(state="attached")  # the upload has reached the player
    page.locator("#prompt textarea").fill("raise the right hand")
    steps_box = page.locator("#steps input[type=number]")
    steps_box.fill(str(steps))
    steps_box.press("Enter")
    return page


def test_generate_shows_the_video_with_its_audio(browser, demo_url, tmp_path):
    page = open_demo(browser, demo_url, REPO / "examples" / "reference.png", REPO / "examples" / "speech.wav")
    page.locator("#generate").click()
    # the page shows the video so far after every window; wait for the whole one
    duration, src = page.wait_for_function(
        """(seconds) => {
            const video = document.querySelector('#result-video video');
            const ready = video && video.readyState >= 1 && video.duration >= seconds - 0.02;
            return ready ? [video.duration, video.src] : null;
        }""",
        arg=SECONDS,
        timeout=180_000,
    ).json_value()
    assert abs(duration - SECONDS) <= 1 / FPS  # the browser decoded the whole video
    assert page.locator("#used-prompt textarea").input_value() == "raise the right hand"

    served = tmp_path / "served.mp4"
    with urllib.request.urlopen(src, timeout=30) as response:
        served.write_bytes(response.read())
    with av.open(str(served)) as container:
        assert len(container.streams.audio) == 1, "the served mp4 has no audio track"
        sound = container.streams.audio[0]
        assert abs(float(sound.duration * sound.time_base) - SECONDS) <= 1 / FPS
        assert sum(1 for _ in container.decode(container.streams.video[0])) == round(SECONDS * FPS)

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert "Traceback" not in page.content()
    page.close()


def write_wav(path: Path, seconds: float) -> Path:
    samples = (np.sin(np.arange(round(seconds * 16000)) * 0.1) * 8000).astype(np.int16)
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(16000)
        file.writeframes(samples.tobytes())
    return path


def test_bad_input_shows_a_readable_message_not_a_trace(browser, demo_url, tmp_path):
    """Audio shorter than one video frame: the pipeline's own message, in the page."""
    page = open_demo(browser, demo_url, REPO / "examples" / "reference.png", write_wav(tmp_path / "blip.wav", 0.01))
    page.locator("#generate").click()
    message = page.get_by_text("shorter than one frame")
    message.first.wait_for(timeout=120_000)
    assert "pass longer audio" in message.first.inner_text()
    page.screenshot(path=str(tmp_path / "error.png"))  # for a look when it fails
    assert "Traceback" not in page.content()
    assert page.locator("#result-video video").count() == 0
    page.close()
