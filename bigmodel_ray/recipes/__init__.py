"""One module per job kind, each a top-to-bottom story: resolve -> run on Ray -> write results."""
