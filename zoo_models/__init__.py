"""The four teams' networks in Keras 3: the shared toolkit (`common`), backbone surgery (`surgery`), layers
(`attention`, `pooling`), the backbones (`backbones/`) and one module per team (`teams/`).

Models are built through `hpa_zoo.load` / `hpa_zoo.registry`, which name each team's builder; see
docs/ARCHITECTURE.md for the layers and what each may import.
"""
