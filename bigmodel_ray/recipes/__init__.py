"""One module per job kind, each a top-to-bottom story: resolve -> run on Ray -> write results.

Recipes are leaves: they are found through the registry (bigmodel_ray/kinds.py) by module
name, and nothing outside this package imports them.
"""
