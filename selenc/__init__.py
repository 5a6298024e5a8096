"""selenc: selective homomorphic encryption against gradient inversion attacks in federated learning."""

import os

# The study never reaches a model hub: weights and tokenizers are read from installed packages and data/.
# Set before any submodule can import transformers / huggingface_hub, which read these once at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

__version__ = "0.1.0"
