"""Sample-quality metrics: Frechet distance and k-NN precision/recall on classifier features."""
