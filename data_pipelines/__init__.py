"""TFDS builders of hcmtfg's datasets, and the synthetic corpus generator.

Importing this package registers the builders with TFDS (cheap: TensorFlow and
Apache Beam are imported only when a dataset is built or read):

  import data_pipelines  # registers the builders below
  builder = tfds.builder('synthetic_talking_faces', data_dir=...)

  synthetic_talking_faces  generated corpus (data_pipelines/synthetic/)
  lrw                      Lip Reading in the Wild (manual download)
  grid                     GRID audio-visual sentence corpus (manual download)
  voxceleb2                VoxCeleb2 (manual download)

Build with `python -m data_pipelines.build --dataset=NAME --data_dir=DIR`.
"""

from data_pipelines import grid
from data_pipelines import lrw
from data_pipelines import synthetic_talking_faces
from data_pipelines import voxceleb2
