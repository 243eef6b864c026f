"""Sentence embeddings from a Hugging Face BERT checkpoint (`--mode=embed`).

  python -m experiments.run --mode=embed --hf_checkpoint=DIR --text="To be, or not to be"

DIR holds config.json, model.safetensors and tokenizer.json (lm/models/hf_bert.py); the
embedding is sentence-transformers' mean pooling, L2-normalised. Prints one JSON object
per text: {"text", "dim", "embedding"}.
"""

import json

from lm.models import hf_bert


def embed(checkpoint_dir: str, texts: list[str]) -> list[list[float]]:
  checkpoint = hf_bert.load(checkpoint_dir)
  vectors = hf_bert.embed(checkpoint, texts)
  for text, vector in zip(texts, vectors):
    print(json.dumps({"text": text, "dim": len(vector),
                      "embedding": [round(float(x), 7) for x in vector]}))
  return vectors.tolist()
