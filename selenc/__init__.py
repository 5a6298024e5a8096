"""selenc: selective homomorphic encryption against gradient inversion attacks in federated learning."""

import os
import warnings

# The study never reaches a model hub: weights and tokenizers are read from installed packages and data/.
# Set before any submodule can import transformers / huggingface_hub, which read these once at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# tqdm.auto falls back to a text bar inside Jupyter without ipywidgets and warns about it in every rendered report;
# selenc's progress bars run in the terminal (the sweep, model pretraining), never inside a report's cells.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
