"""Model families by name: `family -> (config dataclass, flax module)`.

New families register here; the trainer and the runner look models up by name.
"""

from lm.models.bert import Bert, BertConfig
from lm.models.clip import CLIP, CLIPConfig
from lm.models.encdec import EncDecConfig, EncoderDecoder
from lm.models.gpt import GPT, GPTConfig
from lm.models.ngram import NGramConfig, NGramLM
from lm.models.rnn import RecurrentConfig, RecurrentLM
from lm.models.ssm import SSMLM, SSMConfig
from lm.models.vit import CaptionConfig, ImageCaptioner, ViT, ViTConfig

FAMILIES = {
    "gpt": (GPTConfig, GPT),
    "bert": (BertConfig, Bert),  # encoder-only; train with task "mlm_nsp"
    "encdec": (EncDecConfig, EncoderDecoder),  # T5/BART; tasks span_corruption, denoising, seq2seq
    "ngram": (NGramConfig, NGramLM),  # counts, not a flax module: fitted by experiments/ngram.py
    "recurrent": (RecurrentConfig, RecurrentLM),  # RNN/LSTM/GRU; train with task "tbptt_lm"
    "ssm": (SSMConfig, SSMLM),  # gated linear recurrence (Hawk / RG-LRU); task "causal_lm"
    "clip": (CLIPConfig, CLIP),  # ViT + text tower, contrastive; task "clip"
    "caption": (CaptionConfig, ImageCaptioner),  # ViT encoder + text decoder; "captioning"
    "vit": (ViTConfig, ViT),  # ViT + linear head (model.num_classes); task "image_classify"
}


def model_config_class(family: str):
  from lm.errors import UserError
  if family not in FAMILIES:
    raise UserError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
  return FAMILIES[family][0]


def build_model(family: str, config):
  return FAMILIES[family][1](config)
