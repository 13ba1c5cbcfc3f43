"""Generation: a photo and speech -> frames, a video, a stream.

  photo.py           a photo -> aligned crop and normalised example landmark
  networks.py        the networks and face analyser loaded once (warm)
  chunked.py         AT-net / VG-net on chunks with their recurrent state carried
  generate.py        the chunk driver every output path uses, whole-video generation
  mfcc_stream.py     speech in pieces -> the exact MFCC windows
  compose.py         paste-back into the photo, the intermediates view
  batch_generate.py  one video or a pairs CSV (resumable)
  realtime.py        paced speech in, frames out, latency report
  face_prefetch.py   dlib's work on the photo in a child process
  demo_media.py      the demo's photo, WAV writing, contact sheet

Imports: `weights`, `features`, `media`, `models`, `runtime` and the root modules.
"""
