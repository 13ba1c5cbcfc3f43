"""Checks that benchmarks/release_torch.py declares the release networks exactly.

The key/shape list of the release checkpoints is reference data outside the
repository (`release_state_dict_keys.txt` in the `design` folder beside the
shared data; see `release_keys`); the parameter counts are those measured on
the release's own module definitions.
"""

from __future__ import annotations

import pathlib
import re

import pytest

# Section title prefix in the key list -> (builder name, trainable parameters).
NETWORKS = {
    'AT-net': ('ATNetTorch', 30_071_750),
    'VG-net generator': ('VGNetTorch', 58_355_781),
    'discriminator': ('DiscriminatorTorch', 21_491_473),
}
UNUSED_DECODER_PARAMS = 594_568  # the discriminator's unused `decoder` MLP


def read_release_keys(
    path: pathlib.Path) -> dict[str, dict[str, tuple[int, ...]]]:
  """Parses the key list: {section title: {state_dict key: shape}}."""
  sections: dict[str, dict[str, tuple[int, ...]]] = {}
  current = None
  for line in path.read_text().splitlines():
    if line.startswith('## '):
      current = line[3:].split(' (')[0]
      sections[current] = {}
    elif line.strip():
      key, shape = line.split('\t')
      sections[current][key] = tuple(int(d) for d in re.findall(r'\d+', shape))
  return sections


@pytest.fixture(scope='module')
def release_keys(shared_data):
  path = shared_data.parent / 'design' / 'release_state_dict_keys.txt'
  if not path.is_file():
    pytest.fail(f'missing {path}')
  return read_release_keys(path)


def test_key_list_has_the_three_networks(release_keys):
  assert set(release_keys) == set(NETWORKS)
  assert all(len(keys) > 40 for keys in release_keys.values())


@pytest.mark.parametrize('section', list(NETWORKS))
def test_state_dict_matches_release(torch, release_keys, section):
  from benchmarks import release_torch  # pylint: disable=g-import-not-at-top
  builder, num_params = NETWORKS[section]
  model = getattr(release_torch, builder)()
  got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  want = release_keys[section]
  assert sorted(set(want) - set(got)) == []
  assert sorted(set(got) - set(want)) == []
  wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
  assert wrong == {}
  assert list(got) == list(want)  # same order as the release's module code
  assert sum(p.numel() for p in model.parameters()) == num_params


def test_discriminator_decoder_is_unused(torch):
  from benchmarks import release_torch  # pylint: disable=g-import-not-at-top
  model = release_torch.DiscriminatorTorch(image_size=32, base_width=8).eval()
  decoder_params = sum(p.numel() for p in model.decoder.parameters())
  assert decoder_params == UNUSED_DECODER_PARAMS
  frames = torch.randn(2, 3, 3, 32, 32)
  lmark = torch.randn(2, 136)
  prob, landmarks = model(frames, lmark)
  prob.sum().backward(retain_graph=True)
  landmarks.sum().backward()
  assert all(p.grad is None for p in model.decoder.parameters())
  assert model.img_fc[0].weight.grad is not None


def test_convgru_modes_differ_only_in_recurrence_axis(torch):
  """Release mode recurs over axis 0; paper mode over axis 1 (time)."""
  from benchmarks import release_torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  release = release_torch.ConvGRU(4, 6, over_batch_axis=True)
  paper = release_torch.ConvGRU(4, 6, over_batch_axis=False)
  paper.load_state_dict(release.state_dict())
  x = torch.randn(3, 5, 4, 6, 6)
  with torch.no_grad():
    # Each axis-0 slice of the paper mode is an independent sequence over time.
    y_paper = paper(x)
    y_first = paper(x[:1])
    torch.testing.assert_close(y_paper[:1], y_first)
    # The release mode equals the paper mode on the transposed input.
    y_release = release(x)
    torch.testing.assert_close(
        y_release, paper(x.transpose(0, 1)).transpose(0, 1))
    # At N=1 the release mode has no temporal recurrence: each frame is step 0.
    y_single = release(x[:1])
    for i in range(5):
      torch.testing.assert_close(y_single[:, i], release(x[:1, i:i + 1])[:, 0])
    assert not torch.allclose(y_paper, y_release)


def test_convgru_matches_a_hand_written_step(torch):
  """One step from a zero state: h' = (1 - z) * n, gates from the input conv."""
  from benchmarks import release_torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(1)
  gru = release_torch.ConvGRU(2, 3, over_batch_axis=False)
  x = torch.randn(1, 1, 2, 7, 7)
  with torch.no_grad():
    gi = torch.nn.functional.conv2d(x[:, 0], gru.weight_ih_l0, gru.bias_ih_l0,
                                    padding=2, dilation=2)
    bh_r, bh_z, bh_n = gru.bias_hh_l0.view(3, 1, 3, 1, 1)
    i_r, i_z, i_n = gi.chunk(3, 1)
    r = torch.sigmoid(i_r + bh_r)
    z = torch.sigmoid(i_z + bh_z)
    n = torch.tanh(i_n + r * bh_n)
    torch.testing.assert_close(gru(x)[:, 0], (1 - z) * n)
