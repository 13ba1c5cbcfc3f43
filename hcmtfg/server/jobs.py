"""The server's jobs: a bounded queue and one worker on the warm networks.

Requests are checked and prepared (photo cropped, speech decoded) in the
request's thread, then queued; one worker thread runs them in order on the
shared `Pipeline` (two CPU cores are busy with one video; a second job only
waits). While a job runs, every frame is also JPEG-encoded at preview size,
so clients can watch the frames arrive (`Job.previews`) before the mp4 is
finished.

Each job owns a temporary folder under the server's root: its uploads are
deleted once read, and its outputs when the job is removed (a kept job
expires after `keep_seconds`, or when more than `keep_jobs` finished jobs
exist, or at shutdown, when the whole root goes).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
from typing import Any

from absl import logging
import cv2
import numpy as np

from hcmtfg.features import audio as audio_lib
from hcmtfg.inference import compose
from hcmtfg.inference import engine
from hcmtfg.inference import generate
from hcmtfg.inference import outputs as outputs_lib
from hcmtfg.inference import photo as photo_lib
from hcmtfg.inference import warm as warm_lib
from hcmtfg.media import video_writer
from hcmtfg.server import uploads

PREVIEW_SIDE = 480  # long side of the streamed JPEG frames, pixels
PREVIEW_SECONDS = 120.0  # an ended job's JPEG frames are dropped after this
RESULT = "result.mp4"
INTERMEDIATES = "intermediates.mp4"


@dataclasses.dataclass
class Job:
  """One photo + speech -> video request.

  Attributes:
    id: random hex name (never derived from the request).
    folder: its temporary folder.
    photo: the prepared photo.
    speech: (N,) float32 16 kHz.
    track, rate: the audio track for the mp4 and its sample rate.
    paste_back, intermediates: the options.
    names: {'image', 'audio'}: the uploaded names as shown to the user.
  """
  id: str
  folder: str
  photo: photo_lib.PreparedPhoto
  speech: np.ndarray
  track: np.ndarray
  rate: int
  paste_back: bool = False
  intermediates: bool = False
  names: dict[str, str] = dataclasses.field(default_factory=dict)
  state: str = "queued"  # queued | running | done | failed
  error: str | None = None
  created: float = dataclasses.field(default_factory=time.time)
  started: float | None = None
  finished: float | None = None
  first_frame: float | None = None
  frames_done: int = 0
  outputs: dict[str, str] = dataclasses.field(default_factory=dict)
  previews: list[bytes] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    self.frames_total = audio_lib.num_video_frames(self.speech.size)
    self.seconds = self.speech.size / audio_lib.SAMPLE_RATE  # of speech
    self.changed = threading.Condition()

  @property
  def ended(self) -> bool:
    return self.state in ("done", "failed")

  def update(self, **changes: Any) -> None:
    """Sets attributes and wakes the waiters."""
    with self.changed:
      for name, value in changes.items():
        setattr(self, name, value)
      self.changed.notify_all()

  def wait(self, timeout: float | None = None) -> bool:
    """Blocks until the job ended; False on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with self.changed:
      while not self.ended:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
          return False
        self.changed.wait(left)
    return True

  def previews_from(self, index: int, timeout: float = 30.0
                    ) -> tuple[list[bytes], bool]:
    """(previews from `index` on, whether no more will come); waits for new
    ones while the job runs."""
    with self.changed:
      if len(self.previews) <= index and not self.ended:
        self.changed.wait(timeout)
      return self.previews[index:], self.ended

  def status(self, position: int | None = None) -> dict[str, Any]:
    """The JSON the API returns for the job."""
    base = f"/api/jobs/{self.id}"
    now = self.finished or time.time()
    status = {
        "id": self.id, "state": self.state, "error": self.error,
        "frames_done": self.frames_done, "frames_total": self.frames_total,
        "speech_seconds": round(self.seconds, 3),
        "elapsed_seconds": round(now - self.created, 3),
        "generation_seconds": (round(now - self.started, 3)
                               if self.started else None),
        "first_frame_seconds": (round(self.first_frame - self.created, 3)
                                if self.first_frame else None),
        "paste_back": self.paste_back, "intermediates": self.intermediates,
        "names": self.names, "status_url": base,
        "stream_url": f"{base}/stream.mjpeg",
        "video_url": f"{base}/{RESULT}" if RESULT in self.outputs else None,
        "intermediates_url": (f"{base}/{INTERMEDIATES}"
                              if INTERMEDIATES in self.outputs else None),
    }
    if position is not None:
      status["position"] = position
    return status


class JobRunner:
  """The queue, the worker thread and the jobs' folders.

  Args:
    warm: the warm networks.
    limits: upload limits (max_queued is used here).
    root: folder for the jobs' folders (None: a new temporary folder,
      removed by `close`).
    chunk_frames, first_chunk_frames: the generation's chunk schedule.
    keep_seconds, keep_jobs: how long / how many finished jobs are kept.
    preset: x264 preset of the result videos.
  """

  def __init__(self, warm: warm_lib.WarmNetworks, limits: uploads.Limits,
               *, root: str | None = None,
               chunk_frames: int = engine.CHUNK_FRAMES,
               first_chunk_frames: int = 4, keep_seconds: float = 1800.0,
               keep_jobs: int = 16, preset: str = video_writer.FAST_PRESET):
    self.warm = warm
    self.limits = limits
    self.chunk_frames = chunk_frames
    self.first_chunk_frames = first_chunk_frames
    self.keep_seconds = keep_seconds
    self.keep_jobs = keep_jobs
    self.preset = preset
    self.root = root or tempfile.mkdtemp(prefix="hcmtfg_serve_")
    self._own_root = root is None
    os.makedirs(self.root, exist_ok=True)
    self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
    self._lock = threading.Lock()
    self._queue: queue.Queue[Job | None] = queue.Queue()
    self._waiting: list[str] = []
    self.prepare_lock = threading.Lock()  # one upload check at a time
    self.counts = collections.Counter()
    self._thread = threading.Thread(target=self._loop, name="generate",
                                    daemon=True)
    self._closed = False

  def start(self) -> None:
    self._thread.start()

  def close(self) -> None:
    """Stops the worker (after the running job) and removes every folder."""
    if self._closed:
      return
    self._closed = True
    self._queue.put(None)
    if self._thread.is_alive():
      self._thread.join(timeout=600)
    with self._lock:
      jobs = list(self._jobs.values())
      self._jobs.clear()
    for job in jobs:
      shutil.rmtree(job.folder, ignore_errors=True)
    if self._own_root:
      shutil.rmtree(self.root, ignore_errors=True)

  # --------------------------------------------------------------------------
  # Jobs.
  # --------------------------------------------------------------------------

  def new_folder(self) -> tuple[str, str]:
    """(job id, its new empty folder)."""
    job_id = secrets.token_hex(8)
    folder = os.path.join(self.root, f"job-{job_id}")
    os.mkdir(folder)
    return job_id, folder

  def submit(self, job: Job) -> int:
    """Queues a job; returns its position (0 = next). Raises UploadError 503
    when max_queued jobs already wait."""
    self.expire()
    with self._lock:
      if len(self._waiting) >= self.limits.max_queued:
        raise uploads.UploadError(
            503, f"the server is busy ({len(self._waiting)} videos waiting); "
            "try again in a minute")
      self._jobs[job.id] = job
      self._waiting.append(job.id)
      position = len(self._waiting) - 1
    self.counts["submitted"] += 1
    self._queue.put(job)
    return position

  def get(self, job_id: str) -> Job | None:
    with self._lock:
      return self._jobs.get(job_id)

  def position(self, job: Job) -> int | None:
    with self._lock:
      return (self._waiting.index(job.id) if job.id in self._waiting
              else None)

  def remove(self, job_id: str) -> bool:
    """Deletes an ended job and its files; False if unknown or not ended."""
    with self._lock:
      job = self._jobs.get(job_id)
      if job is None or not job.ended:
        return False
      del self._jobs[job_id]
    shutil.rmtree(job.folder, ignore_errors=True)
    return True

  def expire(self) -> None:
    """Removes ended jobs past keep_seconds, and the oldest past keep_jobs;
    drops the preview frames of jobs ended PREVIEW_SECONDS ago."""
    now = time.time()
    with self._lock:
      ended = [j for j in self._jobs.values() if j.ended]
      for job in ended:
        if job.previews and now - (job.finished or now) > PREVIEW_SECONDS:
          job.previews = []
      old = [j for j in ended if now - (j.finished or now) > self.keep_seconds]
      extra = ended[:max(len(ended) - self.keep_jobs, 0)]
      gone = {j.id: j for j in old + extra}
      for job_id in gone:
        del self._jobs[job_id]
    for job in gone.values():
      shutil.rmtree(job.folder, ignore_errors=True)

  def stats(self) -> dict[str, Any]:
    with self._lock:
      running = [j.id for j in self._jobs.values() if j.state == "running"]
      return {"queued": len(self._waiting), "running": len(running),
              "kept": sum(j.ended for j in self._jobs.values()),
              "done": self.counts["done"], "failed": self.counts["failed"]}

  # --------------------------------------------------------------------------
  # The worker.
  # --------------------------------------------------------------------------

  def _loop(self) -> None:
    while True:
      try:
        job = self._queue.get(timeout=60)
      except queue.Empty:
        self.expire()
        continue
      if job is None:
        return
      with self._lock:
        if job.id in self._waiting:
          self._waiting.remove(job.id)
      try:
        self._run(job)
        self.counts["done"] += 1
      except Exception as e:  # pylint: disable=broad-except  (keep serving)
        logging.exception("job %s failed", job.id)
        for partial in os.listdir(job.folder):
          if partial.startswith("."):
            os.remove(os.path.join(job.folder, partial))
        job.update(state="failed", finished=time.time(), outputs={},
                   error=f"generation failed ({type(e).__name__}: {e})")
        self.counts["failed"] += 1
      finally:
        # The inputs are no longer needed.
        job.speech = job.track = np.zeros(0, np.float32)

  def _run(self, job: Job) -> None:
    job.update(state="running", started=time.time())
    warm = self.warm
    windows = generate.speech_windows(job.speech)
    stream = warm.frame_stream(job.photo, chunk_frames=self.chunk_frames,
                                   first_chunk_frames=self.first_chunk_frames)
    renderer = compose.Renderer(job.photo, warm.image_size,
                                paste_back=job.paste_back,
                                intermediates=job.intermediates)
    result = os.path.join(job.folder, RESULT)
    side_path = os.path.join(job.folder, INTERMEDIATES)
    with outputs_lib.VideoOutputs(result, renderer, audio=job.track,
                                  audio_sample_rate=job.rate,
                                  preset=self.preset,
                                  intermediates_file=side_path) as videos:
      for chunk in stream.run(windows):
        frames = videos.write(chunk)
        previews = [_jpeg(frame) for frame in frames]
        with job.changed:
          job.previews.extend(previews)
          job.frames_done += frames.shape[0]
          if job.first_frame is None:
            job.first_frame = time.time()
          job.changed.notify_all()
    outputs = {RESULT: result}
    if job.intermediates:
      outputs[INTERMEDIATES] = side_path
    job.update(state="done", finished=time.time(), outputs=outputs)
    logging.info("job %s: %d frames in %.2f s (%.2f s after the request)",
                 job.id, job.frames_done, job.finished - job.started,
                 job.finished - job.created)


def _jpeg(frame: np.ndarray) -> bytes:
  """A frame as JPEG bytes, long side <= PREVIEW_SIDE."""
  height, width = frame.shape[:2]
  side = max(height, width)
  if side > PREVIEW_SIDE:
    scale = PREVIEW_SIDE / side
    # Bilinear costs a fraction of area averaging (this runs on every frame
    # of every job) and is alias-free enough down to half size; smaller
    # previews of large photos still average.
    frame = cv2.resize(frame, (max(round(width * scale), 1),
                               max(round(height * scale), 1)),
                       interpolation=cv2.INTER_LINEAR if scale >= 0.5
                       else cv2.INTER_AREA)
  ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                          [cv2.IMWRITE_JPEG_QUALITY, 85])
  if not ok:
    raise RuntimeError("JPEG encoding failed")
  return data.tobytes()
