"""Reinforcement learning on Ray RLlib (`kind: rl`): the job's algorithm config (algorithm.py),
the training loop with checkpoints, resume and restarts (loop.py), and the trained policy
played greedily, exported to ONNX (policy.py)."""
