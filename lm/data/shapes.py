"""Synthetic image-caption pairs: rendered coloured shapes with sizes and spatial relations.

Each 32 x 32 RGB image (uint8, dim noisy background) shows one object ("a small red
circle") or two ("a large blue square left of a small green cross"). An object is a
colour, a shape and a size; two objects stand in a spatial relation (left of, right
of, above, below), the first object's half of the image given by the relation.
Everything is drawn with NumPy masks and is a deterministic function of the seed.

Held-out compositions: four colour-shape pairs (one per colour and per shape, so
every colour and every shape is still seen in training) never appear in training
scenes. Split "train" and "val" use only the twelve seen pairs; split "novel" puts a
held-out pair in every scene. Classes for zero-shot classification and probing are
the sixteen colour-shape pairs of single-object scenes.
"""

import dataclasses

import grain
import numpy as np

from lm.data.seq2seq_pairs import EOS_ID, PAD_ID, SpecialTokenizer, pad_rows
from lm.data.tokenizers import UNK, WordTokenizer
from lm.errors import UserError

IMAGE_SIZE = 32
COLOURS = {"red": (220, 50, 40), "green": (40, 190, 70), "blue": (50, 90, 230),
           "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 3.5, "large": 6.5}  # half-extent in pixels
RELATIONS = ("left of", "right of", "above", "below")
# One per colour and per shape (a Latin-square diagonal), never in training scenes.
HELD_OUT = frozenset({("red", "square"), ("green", "triangle"), ("blue", "cross"),
                      ("yellow", "circle")})
PAIRS = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)  # class id = index
SEEN = tuple(p for p in PAIRS if p not in HELD_OUT)
NOVEL = tuple(p for p in PAIRS if p in HELD_OUT)
SPLITS = ("train", "val", "novel")
MAX_CAPTION_WORDS = 10  # "a large red circle left of a small blue square"
_ENDLESS = 2**62


@dataclasses.dataclass(frozen=True)
class Obj:
  colour: str
  shape: str
  size: str
  cy: float
  cx: float

  @property
  def words(self) -> str:
    return f"a {self.size} {self.colour} {self.shape}"

  @property
  def label(self) -> int:
    return PAIRS.index((self.colour, self.shape))


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple  # one or two Obj
  relation: str = ""  # two objects: objects[0] <relation> objects[1]

  @property
  def caption(self) -> str:
    if len(self.objects) == 1:
      return self.objects[0].words
    return f"{self.objects[0].words} {self.relation} {self.objects[1].words}"


def vocabulary() -> list[str]:
  words = ["a"] + list(SIZES) + list(COLOURS) + list(SHAPES)
  words += sorted({w for r in RELATIONS for w in r.split()})
  return words


def tokenizer() -> SpecialTokenizer:
  """Ids: 0 <pad>, 1 </s> (EOS), 2 <mask>, 3 <unk>, then the caption words."""
  return SpecialTokenizer(WordTokenizer([UNK] + vocabulary()))


def encode_captions(tok: SpecialTokenizer, captions: list[str], length: int) -> np.ndarray:
  """(N, length) ids: each caption's words, EOS, then padding."""
  return pad_rows([np.append(tok.encode(c), EOS_ID) for c in captions], length)


def _pick_pairs(rng: np.random.Generator, split: str, count: int) -> list[tuple[str, str]]:
  pool = SEEN if split in ("train", "val") else PAIRS
  pairs = [pool[rng.integers(len(pool))]]
  if split == "novel":
    pairs = [NOVEL[rng.integers(len(NOVEL))]]
  while len(pairs) < count:  # a second, different colour-shape pair
    p = pool[rng.integers(len(pool))]
    if p != pairs[0]:
      pairs.append(p)
  if split == "novel" and count == 2 and rng.random() < 0.5:
    pairs.reverse()  # the held-out pair may be either object
  return pairs


def sample_scene(rng: np.random.Generator, split: str, single_fraction: float) -> Scene:
  if split not in SPLITS:
    raise UserError(f"shapes split {split!r}; choose one of {SPLITS}")
  count = 1 if rng.random() < single_fraction else 2
  pairs = _pick_pairs(rng, split, count)
  sizes = [list(SIZES)[rng.integers(len(SIZES))] for _ in range(count)]
  if count == 1:
    cy, cx = rng.uniform(10, 22, 2)
    return Scene((Obj(*pairs[0], sizes[0], cy, cx),))
  relation = RELATIONS[rng.integers(len(RELATIONS))]
  # The first object sits in the half its relation names, the second in the other half.
  first_low = relation in ("left of", "above")
  along = [8.0 + rng.uniform(-1.5, 1.5), 24.0 + rng.uniform(-1.5, 1.5)]
  if not first_low:
    along.reverse()
  across = rng.uniform(8, 24, 2)
  objects = []
  for i in range(2):
    cy, cx = (across[i], along[i]) if relation in ("left of", "right of") else (along[i], across[i])
    objects.append(Obj(*pairs[i], sizes[i], cy, cx))
  return Scene(tuple(objects), relation)


def shape_mask(shape: str, dy, dx, r: float):
  """Pixels of `shape` with half-extent r, given offsets (dy down, dx right) from its centre."""
  if shape == "circle":
    return dy ** 2 + dx ** 2 <= r ** 2
  if shape == "square":
    return (np.abs(dy) <= 0.85 * r) & (np.abs(dx) <= 0.85 * r)
  if shape == "triangle":  # apex up, widening downwards
    return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
  if shape == "cross":
    arm = 0.35 * r
    return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
  raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
  """(32, 32, 3) uint8: noise in [0, 30), objects in their colour +- 20 per channel."""
  image = rng.integers(0, 30, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.int32)
  yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5
  for obj in scene.objects:
    r = SIZES[obj.size] + rng.uniform(-0.5, 0.5)
    mask = shape_mask(obj.shape, yy - obj.cy, xx - obj.cx, r)
    colour = np.clip(np.asarray(COLOURS[obj.colour]) + rng.integers(-20, 21, 3), 0, 255)
    image[mask] = colour
  return image.astype(np.uint8)


def make_examples(rng: np.random.Generator, count: int, split: str,
                  single_fraction: float) -> dict:
  """`count` scenes: images (N, 32, 32, 3) uint8, captions, labels (first object's pair)."""
  scenes = [sample_scene(rng, split, single_fraction) for _ in range(count)]
  return {"images": np.stack([render(s, rng) for s in scenes]),
          "captions": [s.caption for s in scenes],
          "labels": np.asarray([s.objects[0].label for s in scenes], np.int32),
          "num_objects": np.asarray([len(s.objects) for s in scenes], np.int32)}


def eval_examples(seed: int, count: int, split: str, single_fraction: float) -> dict:
  """A fixed evaluation set; its stream never meets the training stream's."""
  return make_examples(np.random.default_rng([seed, 1 + SPLITS.index(split)]), count, split,
                       single_fraction)


def train_dataset(batch_size: int, seed: int, single_fraction: float, text_len: int,
                  names: tuple[str, str] = ("images", "tokens")):
  """Endless batches {names[0]: images, names[1]: caption ids} of training scenes; batch i
  depends on (seed, i) only. A grain MapDataset: its iterator is checkpointable
  (`get_state` / `set_state`).
  """
  tok = tokenizer()

  def batch(_, rng: np.random.Generator):
    ex = make_examples(rng, batch_size, "train", single_fraction)
    return {names[0]: ex["images"], names[1]: encode_captions(tok, ex["captions"], text_len)}

  return grain.MapDataset.range(_ENDLESS).random_map(batch, seed=seed)


def class_prompts(template: str = "a {size} {colour} {shape}") -> list[list[str]]:
  """For each class (colour-shape pair), one prompt per size: averaged for zero-shot."""
  return [[template.format(size=size, colour=c, shape=s) for size in SIZES] for c, s in PAIRS]


def caption_text(ids, tok: SpecialTokenizer) -> str:
  """Words up to the first EOS (padding dropped)."""
  ids = [int(i) for i in ids]
  ids = ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids
  return tok.decode([i for i in ids if i != PAD_ID])
