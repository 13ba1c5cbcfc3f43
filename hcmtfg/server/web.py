"""The HTTP side of the server: the page, the JSON API and the frame stream.

Routes (every error is JSON {"error": "one sentence"} with a 4xx/5xx status):

  GET  /                              the web page (self-contained)
  GET  /api/health                    {"status": "ok", queue, limits, networks}
  POST /api/jobs                      multipart form: image, audio files;
                                      paste_back, intermediates ('1'/'0');
                                      202 {"id", "status_url", "stream_url", ...}
  GET  /api/jobs/ID                   state, frames_done / frames_total, times,
                                      error, video_url when done
  GET  /api/jobs/ID/stream.mjpeg      the frames as they are generated
                                      (multipart/x-mixed-replace JPEGs; from
                                      frame 0, ends with the job)
  GET  /api/jobs/ID/result.mp4        the video (H.264 + AAC), when done
  GET  /api/jobs/ID/intermediates.mp4 landmarks | attention | colour | result
  DELETE /api/jobs/ID                 forget an ended job and its files
  POST /api/generate                  the same form; answers with the mp4
                                      itself once it is made (for scripts)

Built on the standard library's ThreadingHTTPServer: one thread per
connection, so a slow stream never blocks the page or the API; generation
itself is serialised by `jobs.JobRunner`.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.parse
from typing import Any

from absl import logging

from hcmtfg.errors import InputError
from hcmtfg.inference import outputs
from hcmtfg.inference import warm as warm_lib
from hcmtfg.runtime import compile_cache
from hcmtfg.server import jobs as jobs_lib
from hcmtfg.server import uploads

_JOB_PATH = re.compile(r"^/api/jobs/([0-9a-f]{16})(?:/([a-z0-9_.]+))?$")
_BOUNDARY = "hcmtfgframe"
_PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' "
             "blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
             "connect-src 'self'")


@functools.cache
def page() -> bytes:
  """The web page (read once, on first request)."""
  with open(os.path.join(os.path.dirname(__file__), "page.html"), "rb") as f:
    return f.read()


class Server:
  """The warm server: HTTP in threads, one generation worker.

  Args:
    warm: warm networks (`WarmNetworks.load` + `warm_up`).
    host, port: where to listen (port 0: any free port).
    limits: what uploads may be.
    **runner_options: `jobs.JobRunner` options (root, chunk_frames, ...).
  """

  def __init__(self, warm: warm_lib.WarmNetworks, *, host: str = "127.0.0.1",
               port: int = 8000, limits: uploads.Limits = uploads.Limits(),
               **runner_options: Any):
    self.warm = warm
    self.limits = limits
    self.runner = jobs_lib.JobRunner(warm, limits, **runner_options)
    self.started = time.time()
    handler = type("Handler", (_Handler,), {"app": self})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("HTTPServer", (http.server.ThreadingHTTPServer,),
                        {"address_family": family, "daemon_threads": True})
    self.httpd = server_class((host, port), handler)
    self._thread: threading.Thread | None = None

  @property
  def url(self) -> str:
    host, port = self.httpd.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"

  def serve_forever(self) -> None:
    """Serves until `shutdown` (from another thread or a signal handler)."""
    self.runner.start()
    self.httpd.serve_forever(poll_interval=0.2)

  def start(self) -> None:
    """Serves from a background thread (tests, notebooks)."""
    self._thread = threading.Thread(target=self.serve_forever, daemon=True,
                                    name="http")
    self._thread.start()

  def shutdown(self) -> None:
    """Stops serving and removes every temporary file."""
    self.httpd.shutdown()
    self.httpd.server_close()
    self.runner.close()
    if self._thread is not None:
      self._thread.join(timeout=10)

  def health(self) -> dict[str, Any]:
    gen = self.warm.generator
    return {
        "status": "ok", "uptime_seconds": round(time.time() - self.started, 1),
        "jobs": self.runner.stats(), "limits": self.limits.describe(),
        "networks": {"atnet": gen.sources.get("atnet"),
                     "vgnet": gen.sources.get("vgnet"),
                     "image_size": gen.image_size,
                     "chunk_frames": [self.runner.first_chunk_frames,
                                      self.runner.chunk_frames]},
        "compile_cache": compile_cache.STATS.snapshot(),
    }

  def create_job(self, fields: dict[str, uploads.Field]) -> jobs_lib.Job:
    """Checks a form's photo and speech and queues the job.

    Raises:
      UploadError: a bad or missing upload, or a full queue.
    """
    image = uploads.file_field(fields, "image", "photo")
    audio = uploads.file_field(fields, "audio", "speech")
    names = {"image": uploads.display_name(image.filename, "photo"),
             "audio": uploads.display_name(audio.filename, "speech")}
    photo_label = f"photo ({names['image']})"
    speech_label = f"speech ({names['audio']})"
    runner = self.runner
    job_id, folder = runner.new_folder()
    try:
      with runner.prepare_lock:
        photo_path = uploads.save(folder, "photo", image.data)
        speech_path = uploads.save(folder, "speech", audio.data)
        speech = uploads.read_speech(speech_path, speech_label, self.limits)
        pixels = uploads.read_photo(photo_path, photo_label, self.limits)
        try:
          photo = self.warm.prepare_photo(pixels)
        except InputError as e:
          raise uploads.UploadError(400, f"{photo_label}: {e.problem}") from e
        track, rate = outputs.output_audio(speech_path, speech)
        os.remove(photo_path)
        os.remove(speech_path)
      job = jobs_lib.Job(job_id, folder, photo, speech, track, rate,
                         paste_back=uploads.flag(fields, "paste_back"),
                         intermediates=uploads.flag(fields, "intermediates"),
                         names=names)
      runner.submit(job)
    except BaseException:
      shutil.rmtree(folder, ignore_errors=True)
      raise
    return job


class _Handler(http.server.BaseHTTPRequestHandler):
  """Routes one request (see the module docstring)."""

  app: Server  # set on the subclass made by Server
  server_version = "hcmtfg"
  sys_version = ""
  timeout = 120  # seconds a silent client may hold its connection

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logging.debug("%s %s", self.address_string(), format % args)

  # -------------------------------------------------------------------------
  # Dispatch.
  # -------------------------------------------------------------------------

  def do_GET(self):  # pylint: disable=invalid-name
    self._dispatch("GET")

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._dispatch("HEAD")

  def do_POST(self):  # pylint: disable=invalid-name
    self._dispatch("POST")

  def do_DELETE(self):  # pylint: disable=invalid-name
    self._dispatch("DELETE")

  def _dispatch(self, method: str) -> None:
    path = urllib.parse.urlsplit(self.path).path
    try:
      origin = self.headers.get("Origin")
      if method in ("POST", "DELETE") and origin and urllib.parse.urlsplit(
          origin).netloc != self.headers.get("Host"):
        # Another site's page in the user's browser must not use the server.
        raise uploads.UploadError(403, "requests from other sites' pages are "
                                  "refused")
      if path == "/" and method in ("GET", "HEAD"):
        self._send(200, page(), "text/html; charset=utf-8",
                   {"Content-Security-Policy": _PAGE_CSP})
      elif path == "/api/health" and method in ("GET", "HEAD"):
        self._json(200, self.app.health())
      elif path == "/api/jobs" and method == "POST":
        job = self.app.create_job(self._read_form())
        self._json(202, job.status(self.app.runner.position(job)))
      elif path == "/api/generate" and method == "POST":
        self._generate_now()
      elif _JOB_PATH.match(path):
        self._job_route(method, *_JOB_PATH.match(path).groups())
      else:
        self._error(404, f"no such page: {path}")
    except uploads.UploadError as e:
      self._error(e.status, e.message)
    except (BrokenPipeError, ConnectionResetError):
      pass  # the client went away
    except Exception as e:  # pylint: disable=broad-except  (keep serving)
      logging.exception("%s %s failed", method, path)
      self._error(500, f"internal error ({type(e).__name__}); the server "
                  "is still running")

  def _job_route(self, method: str, job_id: str, item: str | None) -> None:
    job = self.app.runner.get(job_id)
    if job is None:
      self._error(404, "no such job (finished jobs are kept for a while, "
                  "then removed)")
    elif item is None and method in ("GET", "HEAD"):
      self._json(200, job.status(self.app.runner.position(job)))
    elif item is None and method == "DELETE":
      if not self.app.runner.remove(job_id):
        self._error(409, "the job is still queued or running")
      else:
        self._send(204, b"", "text/plain")
    elif item == "stream.mjpeg" and method == "GET":
      self._stream(job)
    elif item in (jobs_lib.RESULT, jobs_lib.INTERMEDIATES) and method in (
        "GET", "HEAD"):
      self._video(job, item)
    else:
      self._error(404, f"no such page: {self.path}")

  # -------------------------------------------------------------------------
  # Requests with uploads.
  # -------------------------------------------------------------------------

  def _read_form(self) -> dict[str, uploads.Field]:
    limit = self.app.limits.max_upload_bytes
    length = self.headers.get("Content-Length")
    if length is None:
      self.close_connection = True
      raise uploads.UploadError(411, "the request needs a Content-Length")
    try:
      size = int(length)
    except ValueError:
      self.close_connection = True
      raise uploads.UploadError(400, "bad Content-Length") from None
    if size > limit:
      # Read a moderate excess so the client gets the answer rather than a
      # reset connection; close the connection after a huge one.
      if size <= 4 * limit:
        self._discard(size)
      else:
        self.close_connection = True
      raise uploads.UploadError(
          413, f"the upload is {size / 2**20:.1f} MB; at most "
          f"{limit / 2**20:.0f} MB are accepted")
    body = self.rfile.read(size)
    if len(body) != size:
      self.close_connection = True
      raise uploads.UploadError(400, "the upload was cut short")
    return uploads.parse_form(self.headers.get("Content-Type"), body)

  def _discard(self, size: int) -> None:
    while size > 0:
      data = self.rfile.read(min(size, 1 << 20))
      if not data:
        break
      size -= len(data)

  def _generate_now(self) -> None:
    job = self.app.create_job(self._read_form())
    job.wait()
    if job.state != "done":
      self._error(500, job.error or "generation failed")
      return
    self._video(job, jobs_lib.RESULT)

  # -------------------------------------------------------------------------
  # Responses.
  # -------------------------------------------------------------------------

  def _send(self, status: int, body: bytes, content_type: str,
            headers: dict[str, str] | None = None) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    self.send_header("X-Content-Type-Options", "nosniff")
    for name, value in (headers or {}).items():
      self.send_header(name, value)
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _json(self, status: int, value: Any) -> None:
    self._send(status, json.dumps(value).encode(), "application/json")

  def _error(self, status: int, message: str) -> None:
    try:
      self._json(status, {"error": message})
    except (BrokenPipeError, ConnectionResetError):
      pass

  def _stream(self, job: jobs_lib.Job) -> None:
    """multipart/x-mixed-replace JPEG frames, from the first, until the end."""
    self.close_connection = True
    self.send_response(200)
    self.send_header("Content-Type",
                     f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
    self.send_header("Cache-Control", "no-store")
    self.send_header("X-Content-Type-Options", "nosniff")
    self.end_headers()
    sent = 0
    while True:
      frames, ended = job.previews_from(sent)
      for jpeg in frames:
        self.wfile.write(
            f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: "
            f"{len(jpeg)}\r\nX-Frame: {sent}\r\n\r\n".encode() + jpeg + b"\r\n")
        sent += 1
      self.wfile.flush()
      if ended and not frames:
        break
    self.wfile.write(f"--{_BOUNDARY}--\r\n".encode())

  def _video(self, job: jobs_lib.Job, item: str) -> None:
    path = job.outputs.get(item)
    if path is None:
      if job.state == "failed":
        self._error(409, f"the job failed: {job.error}")
      elif item == jobs_lib.INTERMEDIATES and not job.intermediates:
        self._error(404, "this job was not asked for intermediates")
      else:
        self._error(409, f"the video is not ready yet ({job.state}, "
                    f"{job.frames_done}/{job.frames_total} frames)")
      return
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      self._error(404, "the video was removed")
      return
    start, end = 0, len(data)
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
    headers = {"Accept-Ranges": "bytes",
               "Content-Disposition": f'inline; filename="{item}"'}
    if match and (match.group(1) or match.group(2)):
      if match.group(1):
        start = int(match.group(1))
        end = min(int(match.group(2)) + 1, len(data)) if match.group(2) else end
      else:
        start = max(len(data) - int(match.group(2)), 0)
      if start >= len(data) or start >= end:
        self._send(416, b"", "text/plain",
                   {"Content-Range": f"bytes */{len(data)}"})
        return
      headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
      self._send(206, data[start:end], "video/mp4", headers)
      return
    self._send(200, data, "video/mp4", headers)
