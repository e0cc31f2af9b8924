"""Installs the qmath_jax package."""

import setuptools

setuptools.setup(
    name="qmath_jax",
    version="0.1.0",
    description="Qwen2.5-Math self-improvement pipeline (pretrain, SFT, RM, GRPO, RM@N) in JAX/Flax.",
    packages=setuptools.find_packages(include=["qmath_jax", "qmath_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "sentencepiece>=0.2",
        "tensorflow-datasets>=4.9.8",
        "array-record>=0.8",
        "importlib_resources>=6",  # tensorflow-datasets builds without tensorflow need it
        "sympy>=1.13",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        "tpu": ["jax[tpu]"],
        "gpu": ["jax[cuda12]"],
        "test": ["pytest>=8", "pytest-timeout>=2.3", "nbformat", "nbclient", "ipykernel"],
        # Live comparison against transformers; the default tests use committed golden files.
        "hf": ["torch", "transformers>=4.45"],
    },
)
