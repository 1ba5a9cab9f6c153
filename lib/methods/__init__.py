"""Saliency methods: the registry, the base gradient methods, their differentiable paths,
decoy-enhanced saliency (DANCE), RelEx and the boundary attributions (BSM, BIG, AGI)."""
