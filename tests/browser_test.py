"""The server's web page in a real headless browser (Debian's chromium, driven
by Playwright with that system browser; Playwright downloads nothing).

`python -m launch.serve` runs as a subprocess with tiny random networks. The
browser uploads a photo and speech, waits for the video and checks its
duration and audio track; uploads bad files and finds the server's message;
and records a photo and speech with chromium's fake camera and microphone.
`bash launch/test.sh` installs chromium when it is missing.
"""

import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from hcmtfg.media import video as video_lib
from tests import tiny_networks
from tests.conftest import skip_or_fail

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required",
                  "--use-fake-device-for-media-stream",
                  "--use-fake-ui-for-media-stream"]
SPEECH_SECONDS = 1.5


def chromium_path() -> str | None:
  for name in ("chromium", "chromium-browser"):
    found = shutil.which(name)
    if found:
      return found
  return None


@pytest.fixture(scope="module")
def browser():
  executable = chromium_path()
  if executable is None:
    skip_or_fail("chromium is not installed (bash launch/test.sh installs it "
                 "with apt-get as root)")
  try:
    from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  except ImportError:
    skip_or_fail("playwright is not installed (pip install -r requirements.txt)")
  with sync_playwright() as playwright:
    chromium = playwright.chromium.launch(
        executable_path=executable, chromium_sandbox=False,
        args=CHROMIUM_FLAGS)
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory, shared_data):
  d = tmp_path_factory.mktemp("browser_media")
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(skimage.data.astronaut()).save(d / "astronaut.png")
  (d / "notes.txt").write_text("not a recording\n" * 40)
  return {
      "photo": d / "astronaut.png",
      "speech": tiny_networks.write_speech(d / "speech.wav", shared_data,
                                           SPEECH_SECONDS),
      "truncated": tiny_networks.write_truncated_jpeg(d / "broken.jpg",
                                                      shared_data),
      "text": d / "notes.txt",
  }


@pytest.fixture(scope="module")
def server_url(tmp_path_factory, shared_data):
  """`python -m launch.serve` on a free port; stopped (SIGTERM) at the end."""
  root = tmp_path_factory.mktemp("browser_server")
  atnet, vgnet = tiny_networks.write_workdirs(root, shared_data)
  proc = subprocess.Popen(
      [sys.executable, "-m", "launch.serve", f"--atnet_workdir={atnet}",
       f"--vgnet_workdir={vgnet}", "--port=0", "--chunk_frames=8",
       "--first_chunk_frames=8", "--max_seconds=10",
       f"--compile_cache={root / 'cache'}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines, ready = [], threading.Event()

  def read():
    for line in proc.stdout:
      lines.append(line)
      if "ready at" in line:
        ready.set()

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  if not ready.wait(300):
    proc.kill()
    pytest.fail("launch.serve did not start:\n" + "".join(lines[-30:]))
  url = re.search(r"ready at (\S+)", "".join(lines)).group(1)
  yield url
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(60) == 0
  reader.join(10)
  assert any("temporary files removed" in line for line in lines)


def _health(url: str) -> str:
  with urllib.request.urlopen(url + "api/health", timeout=30) as response:
    return response.read().decode()


def test_page_makes_a_video_with_sound(browser, server_url, media, tmp_path):
  page = browser.new_page()
  page.goto(server_url)
  page.wait_for_function(
      "() => document.getElementById('limitsHint').textContent")
  page.set_input_files("#image", str(media["photo"]))
  page.set_input_files("#audio", str(media["speech"]))
  page.check("#paste_back")
  page.check("#intermediates")
  page.click("#go")
  page.wait_for_function(
      "() => !document.getElementById('resultBox').hidden && "
      "document.getElementById('result').readyState >= 1", timeout=180_000)
  assert page.is_hidden("#error")
  duration = page.eval_on_selector("#result", "v => v.duration")
  assert abs(duration - SPEECH_SECONDS) < 0.1
  assert "Done in" in page.text_content("#took")
  # The streamed frames reached the page.
  assert page.eval_on_selector("#live", "img => img.naturalWidth") > 0
  # The browser decodes an audio track while playing (muted).
  page.eval_on_selector("#result", "v => { v.muted = true; return v.play(); }")
  page.wait_for_function(
      "() => document.getElementById('result').webkitAudioDecodedByteCount > 0",
      timeout=30_000)
  assert page.is_visible("#side")
  # The downloaded file: the photo's size, the speech's length, with audio.
  href = page.get_attribute("#download", "href")
  with urllib.request.urlopen(server_url + href.lstrip("/"), timeout=60) as r:
    (tmp_path / "result.mp4").write_bytes(r.read())
  info = video_lib.probe(tmp_path / "result.mp4")
  assert info.has_audio and (info.width, info.height) == (512, 512)
  assert abs(info.duration - SPEECH_SECONDS) < 0.1
  page.close()


def test_page_shows_the_servers_message_for_bad_files(browser, server_url,
                                                      media):
  page = browser.new_page()
  page.goto(server_url)
  for photo, speech, message in (
      ("truncated", "speech", "photo (broken.jpg): corrupt or truncated image"),
      ("photo", "text", "speech (notes.txt): not an audio file")):
    page.set_input_files("#image", str(media[photo]))
    page.set_input_files("#audio", str(media[speech]))
    page.click("#go")
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    assert message in page.text_content("#error")
    page.wait_for_function("() => !document.getElementById('go').disabled")
  page.close()
  assert '"status": "ok"' in _health(server_url)


def test_page_records_a_photo_and_speech(browser, server_url):
  """Chromium's fake camera (a test pattern, no face) and microphone (beeps):
  the recording is accepted, the photo gets the no-face message."""
  page = browser.new_page()
  page.goto(server_url)
  page.click("#camera")
  page.wait_for_function(
      "() => document.getElementById('cam').videoWidth > 0", timeout=30_000)
  page.click("#snap")
  page.wait_for_selector("#photoPreview:not([hidden])")
  page.click("#record")
  page.wait_for_function(
      "() => document.getElementById('record').textContent === 'Stop'")
  time.sleep(1.5)
  page.click("#record")
  page.wait_for_selector("#audioPreview:not([hidden])", timeout=30_000)
  page.click("#go")
  page.wait_for_selector("#error:not([hidden])", timeout=60_000)
  assert "photo (camera.jpg): no face found" in page.text_content("#error")
  page.close()
