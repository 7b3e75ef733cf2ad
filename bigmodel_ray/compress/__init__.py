"""Model compression: pruning, int8 quantization, low-rank factorization, distillation, and the
measurements every candidate gets (accuracy, size, latency)."""
