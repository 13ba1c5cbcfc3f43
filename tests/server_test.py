"""Tests of the warm server (hcmtfg.server) through its HTTP API, in process,
with tiny random networks: queued concurrent jobs, streamed frames, every
upload limit with its message, temporary files, and health afterwards."""

import concurrent.futures
import json
import pathlib
import re
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
import soundfile

from hcmtfg.features import audio as audio_lib
from hcmtfg.media import video as video_lib
from hcmtfg.server import jobs as jobs_lib
from hcmtfg.server import uploads
from hcmtfg.server import web
from tests import tiny_networks

MAX_UPLOAD = 2 * 2**20
MAX_SECONDS = 4.0


def multipart(files: dict[str, tuple[str, bytes]],
              fields: dict[str, str] | None = None) -> tuple[bytes, str]:
  """(body, content type) of a multipart/form-data request."""
  boundary = uuid.uuid4().hex
  parts = []
  for name, value in (fields or {}).items():
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; '
                 f'name="{name}"\r\n\r\n{value}\r\n'.encode())
  for name, (filename, data) in files.items():
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; '
                 f'name="{name}"; filename="{filename}"\r\nContent-Type: '
                 'application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
  parts.append(f"--{boundary}--\r\n".encode())
  return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(url: str, data: bytes | None = None,
            headers: dict[str, str] | None = None, method: str | None = None
            ) -> tuple[int, bytes, dict[str, str]]:
  """(status, body, headers), also for error statuses."""
  req = urllib.request.Request(url, data=data, headers=headers or {},
                               method=method)
  try:
    with urllib.request.urlopen(req, timeout=120) as response:
      return response.status, response.read(), dict(response.headers)
  except urllib.error.HTTPError as e:
    return e.code, e.read(), dict(e.headers)


def post(url: str, files, fields=None):
  body, content_type = multipart(files, fields)
  status, data, _ = request(url, body, {"Content-Type": content_type})
  return status, (json.loads(data) if data[:1] == b"{" else data)


def wait_done(base: str, job: dict, timeout: float = 120) -> dict:
  deadline = time.time() + timeout
  while time.time() < deadline:
    _, data, _ = request(base + job["status_url"].lstrip("/"))
    status = json.loads(data)
    if status["state"] in ("done", "failed"):
      return status
    time.sleep(0.1)
  raise AssertionError(f"job {job['id']} did not finish")


@pytest.fixture(scope="module")
def media(tmp_path_factory, shared_data):
  d = tmp_path_factory.mktemp("media")
  files = {
      "photo": shared_data / "faces" / "obama.jpg",
      "speech": tiny_networks.write_speech(d / "speech.wav", shared_data, 1.2),
      "no_face": tiny_networks.write_no_face(d / "no_face.png"),
      "truncated": tiny_networks.write_truncated_jpeg(d / "cut.jpg",
                                                      shared_data),
      "text": d / "notes.txt", "silence": d / "silence.wav",
      "long": d / "two_hours.flac", "too_long": d / "five_seconds.wav",
  }
  files["text"].write_text("this is not audio\n" * 50)
  soundfile.write(files["silence"], np.zeros(16000, np.float32), 16000)
  # Two hours of (digital) silence: a small FLAC file that states its length.
  with soundfile.SoundFile(files["long"], "w", 8000, 1, format="FLAC") as f:
    block = np.zeros(8000 * 600, np.int16)
    for _ in range(12):
      f.write(block)
  tiny_networks.write_speech(files["too_long"], shared_data, 5.0)
  return {k: pathlib.Path(v) for k, v in files.items()}


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_data):
  root = tmp_path_factory.mktemp("serve")
  warm, _, _ = tiny_networks.warm_networks(root, shared_data)
  limits = uploads.Limits(max_upload_bytes=MAX_UPLOAD,
                          max_speech_seconds=MAX_SECONDS)
  srv = web.Server(warm, host="127.0.0.1", port=0, limits=limits,
                   root=str(root / "jobs"), chunk_frames=8,
                   first_chunk_frames=8)
  srv.start()
  yield srv
  srv.shutdown()


def read(path: pathlib.Path) -> bytes:
  return path.read_bytes()


def test_page_and_health(server):
  status, page, headers = request(server.url)
  assert status == 200 and headers["Content-Type"].startswith("text/html")
  assert b'id="image"' in page and b'id="audio"' in page
  assert b"paste_back" in page and b"intermediates" in page
  # Self-contained: nothing is loaded from elsewhere.
  assert not re.search(rb"""(src|href)\s*=\s*["']?(https?:)?//""", page)
  assert "default-src 'self'" in headers["Content-Security-Policy"]
  status, data, _ = request(server.url + "api/health")
  health = json.loads(data)
  assert status == 200 and health["status"] == "ok"
  assert health["networks"]["image_size"] == 32
  assert health["limits"]["max_speech_seconds"] == MAX_SECONDS
  assert request(server.url + "nowhere")[0] == 404


def test_two_concurrent_jobs_both_finish_with_streamed_frames(server, media):
  files = {"image": ("obama.jpg", read(media["photo"])),
           "audio": ("speech.wav", read(media["speech"]))}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    submitted = list(pool.map(
        lambda fields: post(server.url + "api/jobs", files, fields),
        [{"paste_back": "1"}, {"intermediates": "1"}]))
  assert [s for s, _ in submitted] == [202, 202]
  jobs = [job for _, job in submitted]
  assert {job["position"] for job in jobs} <= {0, 1}
  # The frames of one job, streamed as JPEGs while it runs.
  status, stream, headers = request(server.url + jobs[1]["stream_url"][1:])
  assert status == 200 and "multipart/x-mixed-replace" in headers[
      "Content-Type"]
  finals = [wait_done(server.url, job) for job in jobs]
  assert [f["state"] for f in finals] == ["done", "done"]
  frames = audio_lib.num_video_frames(int(1.2 * 16000))
  assert stream.count(b"Content-Type: image/jpeg") == frames
  assert [f["frames_total"] for f in finals] == [frames, frames]
  assert [f["speech_seconds"] for f in finals] == [1.2, 1.2]
  assert finals[0]["first_frame_seconds"] <= finals[0]["elapsed_seconds"]
  for final, size in zip(finals, ((360, 640), (32, 32))):
    status, video, headers = request(server.url + final["video_url"][1:])
    assert status == 200 and headers["Content-Type"] == "video/mp4"
    path = pathlib.Path(server.runner.root) / f"check_{final['id']}.mp4"
    path.write_bytes(video)
    info = video_lib.probe(path)
    path.unlink()
    assert info.has_audio and (info.height, info.width) == size
    assert abs(info.duration - 1.2) < 0.1
  assert finals[0]["intermediates_url"] is None
  status, side, _ = request(server.url + finals[1]["intermediates_url"][1:])
  assert status == 200 and len(side) > 1000
  # Range requests (what a <video> element sends).
  status, part, headers = request(server.url + finals[0]["video_url"][1:],
                                  headers={"Range": "bytes=0-99"})
  assert status == 206 and len(part) == 100
  assert headers["Content-Range"].startswith("bytes 0-99/")


def test_generate_answers_with_the_video(server, media):
  status, video = post(server.url + "api/generate",
                       {"image": ("me.jpg", read(media["photo"])),
                        "audio": ("speech.wav", read(media["speech"]))})
  assert status == 200 and video[4:8] == b"ftyp"


BAD_UPLOADS = [
    # (photo, speech, status, words of the message)
    ("no_face", "speech", 400, "photo (no_face.png): no face found"),
    ("truncated", "speech", 400, "photo (cut.jpg): corrupt or truncated image"),
    ("text", "speech", 400, "photo (notes.txt): not an image file"),
    ("photo", "text", 400, "speech (notes.txt): not an audio file"),
    ("photo", "silence", 400, "speech (silence.wav): the recording is silent"),
    ("photo", "long", 400, "speech (two_hours.flac): it is 2:00:00 long; at "
     "most 4 s"),
    ("photo", "too_long", 400, "speech (five_seconds.wav): it is 5.0 s long"),
]


@pytest.mark.parametrize("photo,speech,status,message", BAD_UPLOADS)
def test_each_bad_upload_gets_its_message(server, media, photo, speech, status,
                                          message):
  got, answer = post(server.url + "api/jobs",
                     {"image": (media[photo].name, read(media[photo])),
                      "audio": (media[speech].name, read(media[speech]))})
  assert got == status, answer
  assert message in answer["error"], answer["error"]


def test_request_limits(server, media):
  photo = ("obama.jpg", read(media["photo"]))
  speech = ("speech.wav", read(media["speech"]))
  # Too big: refused before the body is parsed.
  status, answer = post(server.url + "api/jobs",
                        {"image": photo, "audio": ("big.wav", b"\0" * (
                            MAX_UPLOAD + 1000))})
  assert status == 413 and "at most 2 MB" in answer["error"]
  status, answer = post(server.url + "api/jobs", {"image": photo})
  assert status == 400 and "no speech was sent" in answer["error"]
  status, answer = post(server.url + "api/jobs", {"image": photo,
                                                  "audio": ("e.wav", b"")})
  assert status == 400 and "the file is empty" in answer["error"]
  status, data, _ = request(server.url + "api/jobs", b"image=1",
                            {"Content-Type": "application/x-www-form-"
                             "urlencoded"})
  assert status == 415 and b"multipart/form-data" in data
  # A name made to look like a path is only a name, and only in messages.
  status, answer = post(server.url + "api/jobs",
                        {"image": ("../../../../tmp/evil\x07.png",
                                   read(media["no_face"])), "audio": speech})
  assert status == 400 and answer["error"].startswith("photo (evil.png): ")
  assert not pathlib.Path("/tmp/evil.png").exists()
  assert request(server.url + "api/jobs/0123456789abcdef")[0] == 404
  # Another site's page cannot post to it through the user's browser.
  body, content_type = multipart({"image": photo, "audio": speech})
  status, data, _ = request(server.url + "api/jobs", body, {
      "Content-Type": content_type, "Origin": "http://evil.example"})
  assert status == 403 and b"other sites" in data


def test_server_is_healthy_and_clean_after_bad_requests(server, media):
  for photo, speech, *_ in BAD_UPLOADS[:2]:
    post(server.url + "api/jobs",
         {"image": ("p", read(media[photo])), "audio": ("s",
                                                        read(media[speech]))})
  status, data, _ = request(server.url + "api/health")
  assert status == 200 and json.loads(data)["status"] == "ok"
  status, job = post(server.url + "api/jobs",
                     {"image": ("obama.jpg", read(media["photo"])),
                      "audio": ("speech.wav", read(media["speech"]))})
  assert status == 202 and wait_done(server.url, job)["state"] == "done"
  # Refused uploads leave nothing; kept jobs hold only their videos.
  root = pathlib.Path(server.runner.root)
  for folder in root.iterdir():
    assert folder.name.startswith("job-")
    job_id = folder.name[4:]
    assert server.runner.get(job_id).state == "done", folder
    assert {p.name for p in folder.iterdir()} <= {jobs_lib.RESULT,
                                                  jobs_lib.INTERMEDIATES}
  # Deleting a job removes its folder.
  status, _, _ = request(server.url + f"api/jobs/{job['id']}", method="DELETE")
  assert status == 204 and not (root / f"job-{job['id']}").exists()


def test_runner_queue_limit_and_states(tmp_path, server, media):
  """A runner whose worker is not started: jobs stay queued."""
  runner = jobs_lib.JobRunner(server.warm, uploads.Limits(max_queued=2),
                              root=str(tmp_path / "jobs"))
  photo = server.warm.prepare_photo(str(media["photo"]))
  speech = audio_lib.load_audio(media["speech"])
  made = []
  for _ in range(2):
    job_id, folder = runner.new_folder()
    made.append(jobs_lib.Job(job_id, folder, photo, speech, speech, 16000))
    assert runner.submit(made[-1]) == len(made) - 1
  job_id, folder = runner.new_folder()
  with pytest.raises(uploads.UploadError) as error:
    runner.submit(jobs_lib.Job(job_id, folder, photo, speech, speech, 16000))
  pathlib.Path(folder).rmdir()  # what Server.create_job does on refusal
  assert error.value.status == 503 and "2 videos waiting" in error.value.message
  assert made[1].status(runner.position(made[1]))["position"] == 1
  assert not runner.remove(made[0].id)  # still queued
  runner.close()
  assert not any((tmp_path / "jobs").iterdir())


def test_upload_helpers():
  assert uploads.display_name("C:\\Users\\me\\photo.jpg", "x") == "photo.jpg"
  assert uploads.display_name("\x00\x1b[31m", "photo") == "[31m"
  assert uploads.display_name("", "photo") == "photo"
  assert len(uploads.display_name("a" * 500 + ".wav", "x")) <= 60
  body, content_type = multipart({"image": ("a.png", b"123")},
                                 {"paste_back": "on"})
  fields = uploads.parse_form(content_type, body)
  assert fields["image"].data == b"123" and fields["image"].filename == "a.png"
  assert uploads.flag(fields, "paste_back") and not uploads.flag(
      fields, "intermediates")
  with pytest.raises(uploads.UploadError, match="multipart"):
    uploads.parse_form("text/plain", b"x")
