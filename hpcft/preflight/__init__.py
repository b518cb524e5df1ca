"""Login side: "can this cluster run it?" -- the pre-flight checks and the memory estimate."""
