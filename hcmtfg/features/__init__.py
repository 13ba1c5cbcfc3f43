"""From media to what the networks read: speech features and face geometry.

  audio.py          speech loading, resampling, the release's MFCC, per-frame windows
  face.py           dlib detection, the 68 landmarks, tracking through a video
  align.py          the release's square crop and similarity alignment
  landmarks.py      Procrustes and release normalisation, the landmark PCA
  clip_features.py  one clip -> aligned crops, landmarks, normalised landmarks, MFCC

Imports: `media` and the root modules.
"""
