"""The teams: one module per winning team, each reading like that team's method section (docs/teams.md).
A team module imports zoo_models.common / surgery / backbones / attention / pooling, hpa_zoo.nn and the data /
augment ops; never another team, the trainer or the inference code."""
