"""Writes the notebooks in this folder from their cell sources (keeps them reviewable as code).

    python notebooks/make_notebooks.py
"""

import pathlib

import nbformat

HERE = pathlib.Path(__file__).parent

QUICKSTART = [
    ("markdown", """# qmath_jax quickstart

A tiny Qwen2.5-shaped model on CPU: forward pass, packed rows, the KV-cache decode path and a
Hugging Face round trip. On Colab, first run
`!pip install "git+<your clone of this repository>"` (or `pip install -e .` in a checkout)."""),
    ("code", """import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from qmath_jax import hf
from qmath_jax.model import Transformer, get_config, init_cache, init_params

cfg = get_config("tiny")
params = init_params(cfg, jax.random.key(0))
print(cfg)
print(f"{cfg.num_params:,} parameters")"""),
    ("markdown", "## Forward pass: fp32 logits `[batch, length, vocab]`"),
    ("code", """model = Transformer(cfg)
tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
logits = model.apply({"params": params}, tokens)
assert logits.shape == (2, 12, cfg.vocab_size) and logits.dtype == jnp.float32
logits.shape"""),
    ("markdown", """## Packed rows
Two examples share one row; `segment_ids` keep their attention apart and positions restart."""),
    ("code", """a, b = tokens[:1, :7], tokens[1:, :5]
packed = jnp.concatenate([a, b], axis=1)
segments = jnp.array([[1] * 7 + [2] * 5])
packed_logits = model.apply({"params": params}, packed, segment_ids=segments)
alone = model.apply({"params": params}, b)
err = float(jnp.max(jnp.abs(packed_logits[:, 7:] - alone)))
print(f"segment 2 packed vs alone: max abs difference {err:.2e}")
assert err < 1e-4"""),
    ("markdown", "## Greedy decoding through the KV cache"),
    ("code", """cache = init_cache(cfg, batch=1, cache_len=32)
prompt = tokens[:1, :6]
step_logits, cache = model.apply({"params": params}, prompt, cache=cache)
generated = []
next_token = jnp.argmax(step_logits[:, -1], axis=-1)[:, None]
for i in range(8):
  generated.append(int(next_token[0, 0]))
  step_logits, cache = model.apply({"params": params}, next_token,
                                   positions=jnp.array([[6 + i]]), cache=cache)
  next_token = jnp.argmax(step_logits[:, -1], axis=-1)[:, None]
# The same tokens from full forward passes without a cache:
sequence = prompt
for _ in range(8):
  full = model.apply({"params": params}, sequence)
  sequence = jnp.concatenate([sequence, jnp.argmax(full[:, -1:], axis=-1)], axis=1)
print(generated)
assert generated == sequence[0, 6:].tolist()"""),
    ("markdown", "## Hugging Face checkpoints: save, then load back exactly"),
    ("code", """with tempfile.TemporaryDirectory() as tmp:
  hf.save_hf(cfg, params, f"{tmp}/tiny-qwen2")
  cfg2, params2 = hf.load_hf(f"{tmp}/tiny-qwen2")
same = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(params2)))
print("round trip exact:", same)
assert same and cfg2 == cfg"""),
]


NOTEBOOKS = {"quickstart.ipynb": QUICKSTART}


def build(name: str, cells) -> nbformat.NotebookNode:
  """The notebook of `cells`; cell ids are `<stem>-<index>`, so the same cells give the same
  file (nbformat's default ids are random)."""
  nb = nbformat.v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown"
              else nbformat.v4.new_code_cell(src) for kind, src in cells]
  for i, cell in enumerate(nb.cells):
    cell.id = f"{pathlib.Path(name).stem}-{i}"
  return nb


def write(name: str, cells) -> None:
  nbformat.write(build(name, cells), HERE / name)


if __name__ == "__main__":
  for notebook, notebook_cells in NOTEBOOKS.items():
    write(notebook, notebook_cells)
