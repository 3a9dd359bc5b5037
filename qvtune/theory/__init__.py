"""The theory lab: the paper's asymptotic arguments as small, seeded simulations on a CPU.

``python -m qvtune.theory <command> key=value ...`` with three commands:

* ``bound``  - Theorem 1 (generalisation bound of tuning W_q, W_v vs W_q, W_k, W_v) on a real
  model's attention shapes, including grouped-query attention where W_k is narrower.
* ``toy``    - Theorem 2: gradient descent on the toy f(x) = x(W* + a^T b) across widths, to see
  which learning-rate scalings keep the three terms of Delta f_t at Theta(1) and how the best
  lambda = eta_b / eta_a moves with the width n.
* ``stages`` - Section 4.1, Case 1: a softmax attention layer trained from near-zero weights learns
  W_v first; a larger lambda = eta_V / eta_QK shortens that first stage.

It shares nothing with the training code, so it runs without transformers, data or downloads.
"""
