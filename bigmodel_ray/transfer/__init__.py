"""Transfer learning and domain adaptation: fine-tuning strategies, gradient reversal (DANN)."""
