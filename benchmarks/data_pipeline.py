"""SFT pipeline speed and packing efficiency on GSM8K train; prints one JSON object.

  python benchmarks/data_pipeline.py [--data_dir=...] [--seq_len=1024,4096] [--vocab=8192]

No Qwen tokenizer file ships here, so a byte-level BPE (Qwen's pre-tokenizer, ``tokenizers``)
is trained on the GSM8K train questions and solutions first; its vocabulary is smaller than
Qwen's 151,643, so rows hold somewhat more tokens per example than with the real tokenizer.
Reported per sequence length: tokens/s (real, i.e. non-pad, tokens out of the pipeline per
second of wall time, one epoch, single process) and packing efficiency (share of non-pad
tokens over all emitted rows).
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

from qmath_jax.data import chat
from qmath_jax.data import pipelines
from qmath_jax.data import sources
from qmath_jax.data import tokenizer as tokenizer_lib


def run(data_dir, seq_lens, vocab, batch_size, bins_per_batch):
  problems = sources.load("gsm8k/train", data_dir)
  conversations = pipelines.sft_conversations(problems)
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    texts = [chat.render(c["messages"]) for c in conversations]
    tok = tokenizer_lib.train_byte_level_bpe(texts, vocab, os.path.join(tmp, "tokenizer.json"))
    train_s = time.perf_counter() - start
  lengths = [len(tok.encode(t)) for t in texts]
  result = {"dataset": "gsm8k/train", "examples": len(conversations),
            "tokenizer": f"byte-level BPE, vocab {tok.vocab_size}",
            "tokenizer_train_s": round(train_s, 2),
            "tokens_per_example": {"mean": round(float(np.mean(lengths)), 1),
                                   "max": int(np.max(lengths))},
            "runs": []}
  for seq_len in seq_lens:
    for bins in bins_per_batch:
      cfg = pipelines.PipelineConfig(batch_size=batch_size, seq_len=seq_len, seed=0,
                                     num_packing_bins=bins * batch_size)
      pipeline = pipelines.sft_pipeline(conversations, tok, cfg)
      start = time.perf_counter()
      real = emitted = batches = 0
      for batch in pipeline.dataset:
        real += int((batch["segment_ids"] > 0).sum())
        emitted += batch["segment_ids"].size
        batches += 1
      seconds = time.perf_counter() - start
      result["runs"].append({
          "seq_len": seq_len, "batch_size": batch_size, "num_packing_bins": bins * batch_size,
          "batches": batches, "seconds": round(seconds, 2),
          "tokens_per_s": round(real / seconds), "packing_efficiency": round(real / emitted, 4),
          "skipped": pipeline.bad_rows.total})
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--seq_len", default="1024,4096")
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--bins_per_batch", default="1,4",
                      help="packing bins as multiples of the batch size")
  args = parser.parse_args()
  print(json.dumps(run(args.data_dir, [int(s) for s in args.seq_len.split(",")], args.vocab,
                       args.batch_size, [int(b) for b in args.bins_per_batch.split(",")]),
                   indent=1))


if __name__ == "__main__":
  main()
