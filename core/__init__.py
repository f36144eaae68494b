"""The math of logitsearch: softmax, divergences, ranks and roughness (numpy/scipy/numba only)."""
