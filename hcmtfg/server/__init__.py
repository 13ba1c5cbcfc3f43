"""The warm generation server behind `python -m launch.serve`.

  uploads.py   form parsing, limits, photo and speech checks (clear messages)
  jobs.py      the job queue and the one worker running the warm networks
  web.py       routes: the page, the JSON API, the MJPEG frame stream
  page.html    the self-contained web page (no external resources)
"""
