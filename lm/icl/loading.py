"""Any trained GPT workdir back as a model to prompt (causal_lm, sft, distill, dpo,
icl_strings, ...): its config, tokenizer and the newest intact checkpoint's params.

Any gpt-family run is accepted, whatever its task; the optimizer state is never read.
(`lm.workdir.load_trained` does the reading.)
"""

from lm import workdir as workdir_lib

DECODER_FAMILIES = ("gpt",)
Decoder = workdir_lib.TrainedModel


def load_decoder(workdir: str) -> Decoder:
  return workdir_lib.load_trained(workdir, tasks=None, families=DECODER_FAMILIES)
