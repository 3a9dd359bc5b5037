"""qvtune: experiments on fine-tuning W_q, W_k, W_v with their own learning rates.

The learning rates are eta_QK and eta_V = lambda * eta_QK.
"""

__version__ = "0.1.0"
