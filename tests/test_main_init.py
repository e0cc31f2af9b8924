"""A stage starts from a Hugging Face checkpoint: its shapes and its weights, not the preset's."""


import jax
import ml_collections
import numpy as np
import pytest
from conftest import load_config

from qmath_jax import hf
from qmath_jax import main
from qmath_jax.data import synthetic
from qmath_jax.data import tokenizer as tokenizer_lib
from qmath_jax.model import presets
from qmath_jax.model import transformer
from qmath_jax.train import checkpoint as checkpoint_lib
from qmath_jax.train import loop

def _demo_sft_config():
  return ml_collections.ConfigDict(load_config("demo.py", "quick=1").sft.to_dict())


@pytest.mark.slow
def test_sft_from_hf_checkpoint_keeps_its_weights_and_shapes(tmp_path):
  hf_cfg = presets.get_config("tiny-tied", vocab_size=384, num_layers=1)
  hf_params = transformer.init_params(hf_cfg, jax.random.key(5))
  hf.save_hf(hf_cfg, hf_params, tmp_path / "hf")
  tokenizer_lib.train_sentencepiece(synthetic.corpus(200), 384, tmp_path / "tok.model")

  config = _demo_sft_config()
  config.model.preset = "demo"  # ignored: the shapes come from the HF config.json
  config.model.vocab_size = 0
  config.tokenizer.path = str(tmp_path / "tok.model")
  config.init.checkpoint = ""
  config.init.hf_dir = str(tmp_path / "hf")
  config.optim.lr = 1e-12       # the weights stay where the HF checkpoint put them
  config.optim.end_lr = 1e-12
  config.train.total_steps = 1
  config.optim.warmup_steps = 0
  config.train.eval_every = 0
  config.data.eval_source = ""
  main.run(config, str(tmp_path / "run"))

  checkpointer = checkpoint_lib.Checkpointer(tmp_path / "run" / loop.CHECKPOINT_DIR)
  meta = checkpointer.read_meta()
  checkpointer.close()
  assert meta["model"]["num_layers"] == 1 and meta["model"]["tie_embeddings"]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(lambda: hf_params)
  params = checkpoint_lib.restore_params(
      tmp_path / "run" / loop.CHECKPOINT_DIR,
      checkpoint_lib.abstract_with_shardings(abstract, jax.tree.map(lambda _: device, abstract)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
               params, hf_params)
