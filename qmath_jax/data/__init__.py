"""Everything that turns text into training and evaluation inputs.

  paths            where the jsonl data directory is (argument, $QMATH_DATA_DIR, ../shared/data)
  tokenizer        one Tokenizer interface over tokenizer.json and sentencepiece; trainers
  chat             ChatML text (Qwen's template) and ids with an assistant-only loss mask
  records          jsonl reading; bad rows counted with file:line or raised (strict)
  gold             gold answers of raw rows per dataset; brace-balanced last_boxed (pure Python)
  sources          every benchmark/training file -> Problem(id, dataset, question, answer, ...)
  tfds_builders    local sources as TFDS array_record datasets (tfds.data_source + grain)
  pipelines        grain pipelines: pretraining, SFT, RM lists, RL prompts (batch keys there)
  decontaminate    13-gram + LCS-ratio filter against every benchmark, with a removal report
  synthetic        seeded arithmetic word problems (CoT, TIR) and a corpus for the CPU demo
"""
