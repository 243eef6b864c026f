"""Every mask builder in lm/layers/masks.py against small hand-written expected arrays."""

import jax.numpy as jnp
import numpy as np

from lm.layers import masks


def _arr(rows):
  return np.array(rows, bool)


def _check(got, want):
  got = np.asarray(got)
  assert got.dtype == bool
  np.testing.assert_array_equal(got, want)


def test_causal_mask_with_restarted_positions():
  # Two documents packed in a row: positions 0 1 2 | 0 1. The causal rule alone compares
  # positions, so the second document's tokens see the first document's early tokens too.
  pos = jnp.array([[0, 1, 2, 0, 1]])
  want = _arr([[1, 0, 0, 1, 0],
               [1, 1, 0, 1, 1],
               [1, 1, 1, 1, 1],
               [1, 0, 0, 1, 0],
               [1, 1, 0, 1, 1]])
  _check(masks.causal_mask(pos, pos), want[None, None])


def test_padding_mask():
  q_valid = jnp.array([[True, True, False], [True, False, False]])
  k_valid = jnp.array([[True, False, True, True], [False, True, True, False]])
  want = np.zeros((2, 1, 3, 4), bool)
  want[0, 0] = _arr([[1, 0, 1, 1],
                     [1, 0, 1, 1],
                     [0, 0, 0, 0]])
  want[1, 0] = _arr([[0, 1, 1, 0],
                     [0, 0, 0, 0],
                     [0, 0, 0, 0]])
  _check(masks.padding_mask(q_valid, k_valid), want)


def test_valid_keys_mask_broadcasts_over_queries():
  k_valid = jnp.array([[True, True, False, False], [True, False, True, False]])
  got = np.asarray(masks.valid_keys_mask(k_valid))
  assert got.shape == (2, 1, 1, 4)
  _check(got, _arr([[1, 1, 0, 0], [1, 0, 1, 0]])[:, None, None, :])
  # Combined with a 3-query causal mask over cache slots written at index 1..3.
  q_pos = jnp.array([[1, 2, 3], [1, 2, 3]])
  k_pos = jnp.broadcast_to(jnp.arange(4), (2, 4))
  combined = masks.causal_mask(q_pos, k_pos) & masks.valid_keys_mask(k_valid)
  want = np.zeros((2, 1, 3, 4), bool)
  want[0, 0] = _arr([[1, 1, 0, 0],
                     [1, 1, 0, 0],
                     [1, 1, 0, 0]])
  want[1, 0] = _arr([[1, 0, 0, 0],
                     [1, 0, 1, 0],
                     [1, 0, 1, 0]])
  _check(combined, want)


def test_segment_mask_blocks_and_padding():
  seg = jnp.array([[1, 1, 2, 2, 2, 0]])
  want = _arr([[1, 1, 0, 0, 0, 0],
               [1, 1, 0, 0, 0, 0],
               [0, 0, 1, 1, 1, 0],
               [0, 0, 1, 1, 1, 0],
               [0, 0, 1, 1, 1, 0],
               [0, 0, 0, 0, 0, 0]])  # padding (segment 0) sees nothing and is never seen
  _check(masks.segment_mask(seg, seg), want[None, None])


def test_segment_mask_queries_against_other_keys():
  q_seg = jnp.array([[2, 1]])
  k_seg = jnp.array([[1, 2, 0, 2]])
  _check(masks.segment_mask(q_seg, k_seg), _arr([[0, 1, 0, 1],
                                                 [1, 0, 0, 0]])[None, None])


def test_segment_and_causal_on_packed_row():
  seg = jnp.array([[1, 1, 1, 2, 2]])
  pos = masks.positions_from_segments(seg)
  want = _arr([[1, 0, 0, 0, 0],
               [1, 1, 0, 0, 0],
               [1, 1, 1, 0, 0],
               [0, 0, 0, 1, 0],
               [0, 0, 0, 1, 1]])
  _check(masks.causal_mask(pos, pos) & masks.segment_mask(seg, seg), want[None, None])


def test_prefix_lm_mask():
  pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
  got = masks.prefix_lm_mask(pos, pos, jnp.array([2, 0]))
  want = np.zeros((2, 1, 5, 5), bool)
  want[0, 0] = _arr([[1, 1, 0, 0, 0],
                     [1, 1, 0, 0, 0],
                     [1, 1, 1, 0, 0],
                     [1, 1, 1, 1, 0],
                     [1, 1, 1, 1, 1]])
  want[1, 0] = np.tril(np.ones((5, 5), bool))  # empty prefix: plain causal
  _check(got, want)


def test_prefix_lm_mask_whole_row_prefix_is_bidirectional():
  pos = jnp.arange(3)[None]
  _check(masks.prefix_lm_mask(pos, pos, jnp.array([3])), np.ones((1, 1, 3, 3), bool))


def test_cross_mask():
  dec_valid = jnp.array([[True, True, False]])
  enc_valid = jnp.array([[True, False, True, True, False]])
  want = _arr([[1, 0, 1, 1, 0],
               [1, 0, 1, 1, 0],
               [0, 0, 0, 0, 0]])
  _check(masks.cross_mask(dec_valid, enc_valid), want[None, None])


def test_local_mask_window_3():
  pos = jnp.arange(6)[None]
  want = _arr([[1, 0, 0, 0, 0, 0],
               [1, 1, 0, 0, 0, 0],
               [1, 1, 1, 0, 0, 0],
               [0, 1, 1, 1, 0, 0],
               [0, 0, 1, 1, 1, 0],
               [0, 0, 0, 1, 1, 1]])
  _check(masks.local_mask(pos, pos, 3), want[None, None])


def test_local_mask_window_1_is_diagonal_and_decode_query():
  pos = jnp.arange(4)[None]
  _check(masks.local_mask(pos, pos, 1), np.eye(4, dtype=bool)[None, None])
  # One decoding query at position 5 over 8 cache slots, window 2: slots 4 and 5.
  got = masks.local_mask(jnp.array([[5]]), jnp.arange(8)[None], 2)
  _check(got, _arr([[0, 0, 0, 0, 1, 1, 0, 0]])[None, None])


def test_strided_mask_stride_3():
  pos = jnp.arange(7)[None]
  want = _arr([[1, 0, 0, 0, 0, 0, 0],
               [0, 1, 0, 0, 0, 0, 0],
               [0, 0, 1, 0, 0, 0, 0],
               [1, 0, 0, 1, 0, 0, 0],
               [0, 1, 0, 0, 1, 0, 0],
               [0, 0, 1, 0, 0, 1, 0],
               [1, 0, 0, 1, 0, 0, 1]])
  _check(masks.strided_mask(pos, pos, 3), want[None, None])


def test_strided_mask_stride_1_is_causal():
  pos = jnp.arange(4)[None]
  _check(masks.strided_mask(pos, pos, 1), np.tril(np.ones((4, 4), bool))[None, None])


def test_valid_from_tokens():
  tokens = jnp.array([[5, 3, 0, 0], [0, 7, 1, 2]])
  _check(masks.valid_from_tokens(tokens), _arr([[1, 1, 0, 0], [0, 1, 1, 1]]))
  _check(masks.valid_from_tokens(tokens, pad_id=7), _arr([[1, 1, 1, 1], [1, 0, 1, 1]]))


def test_segment_ids_from_eos():
  eos = 2
  tokens = jnp.array([[5, 2, 7, 8, 2, 9, 4],
                      [2, 2, 6, 3, 3, 2, 1]])
  got = np.asarray(masks.segment_ids_from_eos(tokens, eos))
  assert got.dtype == np.int32
  # The EOS belongs to the document it ends; an EOS right after an EOS is a one-token doc.
  np.testing.assert_array_equal(got, [[1, 1, 2, 2, 2, 3, 3],
                                      [1, 2, 3, 3, 3, 3, 4]])


def test_segment_ids_from_eos_with_padding():
  tokens = jnp.array([[5, 2, 7, 8, 2, 0, 0],
                      [4, 4, 4, 0, 0, 0, 0]])
  got = np.asarray(masks.segment_ids_from_eos(tokens, eos_id=2, pad_id=0))
  np.testing.assert_array_equal(got, [[1, 1, 2, 2, 2, 0, 0],
                                      [1, 1, 1, 0, 0, 0, 0]])


def test_positions_from_segments():
  seg = jnp.array([[1, 1, 2, 2, 2, 0, 0],
                   [1, 2, 3, 3, 3, 3, 4],
                   [7, 7, 7, 7, 7, 7, 7]])
  got = np.asarray(masks.positions_from_segments(seg))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, [[0, 1, 0, 1, 2, 0, 1],
                                      [0, 0, 0, 1, 2, 3, 0],
                                      [0, 1, 2, 3, 4, 5, 6]])


def test_masks_from_eos_end_to_end():
  # tokens -> segment ids -> restarted positions -> causal & segment mask.
  tokens = jnp.array([[4, 2, 6, 2, 0]])
  seg = masks.segment_ids_from_eos(tokens, eos_id=2, pad_id=0)
  pos = masks.positions_from_segments(seg)
  np.testing.assert_array_equal(np.asarray(seg), [[1, 1, 2, 2, 0]])
  np.testing.assert_array_equal(np.asarray(pos), [[0, 1, 0, 1, 0]])
  want = _arr([[1, 0, 0, 0, 0],
               [1, 1, 0, 0, 0],
               [0, 0, 1, 0, 0],
               [0, 0, 1, 1, 0],
               [0, 0, 0, 0, 0]])
  _check(masks.causal_mask(pos, pos) & masks.segment_mask(seg, seg), want[None, None])
