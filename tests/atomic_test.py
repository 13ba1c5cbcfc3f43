"""Tests of hcmtfg.atomic."""

import os
import stat

from hcmtfg import atomic


def test_temp_file_gets_default_permissions_beside_the_target(tmp_path):
  target = tmp_path / "new" / "out.png"
  old = os.umask(0o022)
  try:
    fd, tmp = atomic.temp_beside(target, suffix=".png")
  finally:
    os.umask(old)
  with os.fdopen(fd, "wb") as f:
    f.write(b"x")
  os.replace(tmp, target)
  assert os.path.dirname(tmp) == os.fspath(target.parent)
  assert os.path.basename(tmp).startswith(".") and tmp.endswith(".png")
  assert stat.S_IMODE(os.stat(target).st_mode) == 0o644  # mkstemp alone: 0o600
