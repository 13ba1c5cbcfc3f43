"""Media files in and out: photos, and video with its audio track.

  image_io.py     any photo format -> RGB uint8 (EXIF orientation applied)
  video.py        decoding any container at 25 fps (with its audio), probing
  video_writer.py  atomic H.264/AAC mp4 writing (fragmented for streaming), x264 presets

Imports: the library's root modules only (errors, paths, atomic).
"""
