"""How rows go through a model: micro-batches, keyed randomness, layer hooks, optimisers."""
