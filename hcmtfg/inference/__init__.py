"""Generation: a photo and speech -> frames, a video, a stream.

  photo.py           a photo -> aligned crop and normalised example landmark
  networks.py        Generator: both networks, their weights and the PCA, loaded
  chunked.py         AT-net / VG-net on one chunk with the recurrent state carried
  engine.py          FrameStream, the one chunk driver every output path uses
  generate.py        a whole video in memory; AT-net's landmarks alone
  mfcc_stream.py     speech in pieces -> the exact MFCC windows
  compose.py         Renderer: paste-back into the photo, the intermediates view
  outputs.py         the result and intermediates mp4s, their audio track
  warm.py            WarmNetworks: networks and face analyser loaded once (server, stream)
  batch_generate.py  one video or a pairs CSV (resumable)
  realtime.py        paced speech in, frames out, latency report
  face_prefetch.py   dlib's work on the photo in a child process
  demo_media.py      the demo's photo, WAV writing, contact sheet

Imports: `weights`, `features`, `media`, `models`, `runtime` and the root modules.
"""
