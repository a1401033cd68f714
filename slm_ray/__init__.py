"""slm-ray: sweeps of small language models on open-domain QA, distributed with Ray.

Importing the package stays light (no torch, ray, faiss or vllm): entry points import what they use.
"""

__version__ = "0.1.0"
