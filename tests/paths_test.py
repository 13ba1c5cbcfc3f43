"""Tests of hcmtfg.paths: user paths made absolute, `~` expanded, URLs kept."""

import os
import pathlib

from hcmtfg import paths


def test_user_path(tmp_path, monkeypatch):
  home, cwd = tmp_path / "home dir", tmp_path / "work dir"
  cwd.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.chdir(cwd)
  assert paths.user_path("runs/at net") == str(cwd / "runs" / "at net")
  assert paths.user_path(pathlib.Path("../x")) == str(tmp_path / "x")
  assert paths.user_path("~/data sets/") == str(home / "data sets")
  assert paths.user_path("~") == str(home)
  assert paths.user_path(str(tmp_path / "a b")) == str(tmp_path / "a b")
  # A link keeps its own name (a user's path is not resolved further).
  (cwd / "link").symlink_to(tmp_path, target_is_directory=True)
  assert paths.user_path("link") == str(cwd / "link")
  for url in ("gs://bucket/runs/~user/at net", "file:///tmp/x", "s3://b/./y"):
    assert paths.user_path(url) == url
  assert paths.user_path(None) is None and paths.user_path("") == ""


def test_is_remote():
  assert paths.is_remote("gs://bucket/dir")
  assert not paths.is_remote("bucket/dir") and not paths.is_remote("~/gs:")
  assert not paths.is_remote(pathlib.Path("/tmp/x"))
  assert os.path.isabs(paths.user_path("gs:/bucket"))  # not a URL
