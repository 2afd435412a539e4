"""The training layer: the generic trainer for a team recipe (`trainer`), its callbacks and samplers, SWA,
distribution strategies, fine-tuning, Team 3's AutoAugment policy search and the comparison baselines.
Imports every layer below it (inference included: a run ends by fitting thresholds and writing a preset)."""
