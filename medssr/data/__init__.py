"""Real data: loaders, rare-disease entities and tagging, RareDis-Sub categories, reasoning filter, leakage."""
