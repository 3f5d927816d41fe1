"""Command-line tasks as ``run(cfg)`` functions; ``cmd/*.py`` are thin Hydra wrappers around them."""
