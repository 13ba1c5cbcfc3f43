"""Tests of hcmtfg.train.summaries (event files read back, rates, ETA)."""

import glob

import numpy as np
import pytest
import tensorflow as tf

from hcmtfg.train import summaries


def read(logdir):
  """[(step, tag, plugin, value)] of every event file in logdir."""
  out = []
  for path in sorted(glob.glob(f'{logdir}/events.out.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        out.append((event.step, value.tag,
                    value.metadata.plugin_data.plugin_name,
                    tf.make_ndarray(value.tensor)))
  return out


def test_writer_round_trip(tmp_path):
  writer = summaries.SummaryWriter(tmp_path, active=True)
  image = np.zeros((5, 7, 3), np.uint8)
  image[1, 2] = (255, 10, 20)
  writer.scalars(3, {'train/loss': 0.25, 'eval/ssim': np.float32(0.5)})
  writer.images(4, {'images/x': image})
  writer.text(0, 'config', 'hello')
  with pytest.raises(ValueError, match='uint8'):
    writer.images(4, {'images/bad': image.astype(np.float32)})
  writer.close()

  got = {(step, tag): (plugin, value)
         for step, tag, plugin, value in read(tmp_path / 'tensorboard')}
  assert got[(3, 'train/loss')][0] == 'scalars'
  assert float(got[(3, 'train/loss')][1]) == 0.25
  assert float(got[(3, 'eval/ssim')][1]) == 0.5
  plugin, data = got[(4, 'images/x')]
  assert plugin == 'images' and (data[0], data[1]) == (b'7', b'5')
  np.testing.assert_array_equal(tf.io.decode_png(data[2]).numpy(), image)
  assert got[(0, 'config')] == ('text', np.array(b'hello', object))


def test_inactive_writer_writes_nothing(tmp_path):
  writer = summaries.SummaryWriter(tmp_path, active=False)
  writer.scalars(1, {'a': 1.0})
  writer.images(1, {'b': np.zeros((2, 2, 3), np.uint8)})
  writer.close()
  assert not (tmp_path / 'tensorboard').exists()


class FakeWriter:

  def __init__(self):
    self.written = []

  def scalars(self, step, values):
    self.written.append((step, dict(values)))

  def flush(self):
    pass


def test_progress_adds_rates_without_eval_time_and_logs_eta(monkeypatch):
  clock = iter([100.0, 110.0, 130.0])
  monkeypatch.setattr(summaries.time, 'monotonic', lambda: next(clock))
  lines = []
  monkeypatch.setattr(summaries.logging, 'info',
                      lambda fmt, *args: lines.append(fmt % args))
  writer = FakeWriter()
  progress = summaries.RunProgress(writer, num_steps=100, global_batch_size=8,
                                   learning_rate=1e-3)
  progress(10, {'train/loss': 1.0})
  assert writer.written[0][1] == {'train/loss': 1.0,
                                  'train/learning_rate': 1e-3}
  progress(20, {'train/loss': 0.5})  # 10 steps in 10 s
  rates = writer.written[1][1]
  assert rates['train/steps_per_sec'] == pytest.approx(1.0)
  assert rates['train/examples_per_sec'] == pytest.approx(8.0)
  assert 'ETA 1m20s' in lines[-1] and 'loss=0.5' in lines[-1]
  progress(20, {'eval/l1': 0.1})  # eval metrics pass through unchanged
  assert writer.written[2] == (20, {'eval/l1': 0.1})
  progress.exclude(15.0)  # 20 s elapsed, 15 s of them evaluating
  progress(30, {'train/loss': 0.4})
  assert writer.written[3][1]['train/steps_per_sec'] == pytest.approx(2.0)


@pytest.mark.parametrize('seconds, text', [(42, '42s'), (185, '3m05s'),
                                           (3725, '1h02m'), (-3, '0s')])
def test_format_duration(seconds, text):
  assert summaries.format_duration(seconds) == text
