"""TFDS builders that turn the local jsonl sources into ``array_record`` datasets.

``QmathProblems`` has one builder config per dataset of ``sources.SOURCES`` (``gsm8k``,
``math``, ``mawps``, ...); its splits are that dataset's files (``train``, ``test``,
``addsub``, ...). Every example has the ``sources.Problem`` fields: ``id``, ``dataset``,
``question``, ``answer``, ``solution`` (text), ``choices`` (sequence of text) and ``meta``
(a JSON string). array_record needs no tensorflow, so these build and read on any host:

  path = build("gsm8k", data_dir=..., tfds_dir=...)          # writes array_record files once
  source = tfds.data_source("qmath_problems/gsm8k", split="train", data_dir=tfds_dir)
  grain.MapDataset.source(source).map(problem_from_example)   # random access for grain

Bad rows are reported as ``sources.load`` reports them (``strict`` raises at file and line).
"""

import json
import os

import tensorflow_datasets as tfds

from qmath_jax.data import paths
from qmath_jax.data import records
from qmath_jax.data import sources


def _splits_by_dataset() -> dict[str, tuple[str, ...]]:
  table = {}
  for name in sources.SOURCES:
    dataset, split = name.split("/")
    table.setdefault(dataset, []).append(split)
  return {k: tuple(v) for k, v in table.items()}


SPLITS = _splits_by_dataset()


class QmathProblems(tfds.core.GeneratorBasedBuilder):
  """Benchmark and training problems of the data directory in the common schema."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Problems from the local jsonl files of MANIFEST.md."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in SPLITS]

  def __init__(self, *, source_data_dir=None, strict: bool = False, **kwargs):
    """``source_data_dir``: the jsonl data directory (None resolves as ``paths``)."""
    self.source_data_dir = source_data_dir
    self.strict = strict
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "id": text, "dataset": text, "question": text, "answer": text, "solution": text,
            "choices": tfds.features.Sequence(tfds.features.Text()), "meta": text,
        }),
        description="Math problems (question, gold answer, solution, choices) from local jsonl.")

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    return {split: self._generate_examples(f"{self.builder_config.name}/{split}")
            for split in SPLITS[self.builder_config.name]}

  def _generate_examples(self, source_name):
    bad_rows = records.BadRows(strict=self.strict)
    problems = sources.load(source_name, self.source_data_dir, bad_rows=bad_rows)
    if bad_rows.total:
      print(f"{source_name}: {bad_rows.summary()}")  # Surfaced in the build log.
    for index, problem in enumerate(problems):
      row = problem.to_dict()
      row["meta"] = json.dumps(row["meta"], ensure_ascii=False, sort_keys=True)
      yield index, row


def build(dataset: str, *, tfds_dir: str | os.PathLike, data_dir=None,
          strict: bool = False) -> QmathProblems:
  """Writes the array_record files of ``dataset`` (a key of SPLITS) once; returns the builder."""
  if dataset not in SPLITS:
    raise KeyError(f"unknown dataset {dataset!r}; known: {sorted(SPLITS)}")
  builder = QmathProblems(config=dataset, source_data_dir=paths.require_data_dir(data_dir),
                          strict=strict, data_dir=os.fspath(tfds_dir), file_format="array_record")
  builder.download_and_prepare()
  return builder


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def problem_from_example(example: dict) -> sources.Problem:
  """A decoded array_record example (bytes or str fields) back to a ``sources.Problem``."""
  return sources.Problem(
      id=_text(example["id"]), dataset=_text(example["dataset"]),
      question=_text(example["question"]), answer=_text(example["answer"]),
      solution=_text(example["solution"]),
      choices=tuple(_text(c) for c in example["choices"]),
      meta=json.loads(_text(example["meta"])))
