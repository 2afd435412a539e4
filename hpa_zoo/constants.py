"""Facts about the HPA Image Classification data shared by every module.

Every number here cites `docs/teams.md` (the facts file), section in brackets.
"""
from __future__ import annotations

import numpy as np

#: The four stains, in the channel order used everywhere in hpa-zoo (teams.md §0.1: R,G,B,Y).
#: red = microtubules, green = protein of interest, blue = nucleus, yellow = endoplasmic reticulum.
CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")

#: Number of classes of the competition (teams.md §0.2).
NUM_CLASSES = 28

#: Class names by index (teams.md §0.2, from bestfitting `config.py::LABEL_NAMES`).
CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Peroxisomes",
    "Endosomes",
    "Lysosomes",
    "Intermediate filaments",
    "Actin filaments",
    "Focal adhesion sites",
    "Microtubules",
    "Microtubule ends",
    "Cytokinetic bridge",
    "Mitotic spindle",
    "Microtubule organizing center",
    "Centrosome",
    "Lipid droplets",
    "Plasma membrane",
    "Cell junctions",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Cytoplasmic bodies",
    "Rods & rings",
)

#: Images per class in the Kaggle train.csv, 31,072 images (teams.md §0.2).
KAGGLE_TRAIN_COUNTS = np.array(
    [12885, 1254, 3621, 1561, 1858, 2513, 1008, 2822, 53, 45, 28, 1093, 688, 537,
     1066, 21, 530, 210, 902, 1482, 172, 3777, 802, 2965, 322, 8228, 328, 11],
    dtype=np.int64,
)
KAGGLE_TRAIN_SIZE = 31072

#: Images per class in HPAv18RBGY_wodpl.csv, 74,606 images (teams.md §0.2).
HPAV18_COUNTS = np.array(
    [28073, 1818, 7250, 1768, 3272, 3425, 2717, 6583, 164, 152, 154, 1101, 1545, 921,
     1626, 42, 760, 236, 991, 2190, 266, 10032, 1927, 7380, 106, 29138, 378, 116],
    dtype=np.int64,
)
HPAV18_SIZE = 74606

#: Mean labels per Kaggle train image (teams.md §0.1) and the maximum.
MEAN_LABELS_PER_IMAGE = 1.634
MAX_LABELS_PER_IMAGE = 5

#: Public-leaderboard class ratios (teams.md §0.4, discussion 68678). The 0.01 entries are placeholders.
PUBLIC_LB_RATIOS = np.array(
    [0.3624, 0.04384, 0.07527, 0.05932, 0.07527, 0.07527, 0.04384, 0.07527, 0.01, 0.01, 0.01,
     0.04384, 0.04384, 0.01420, 0.04384, 0.01, 0.02881, 0.01420, 0.02881, 0.05932, 0.01, 0.1261,
     0.02881, 0.07527, 0.01, 0.2225, 0.02881, 0.01],
    dtype=np.float64,
)
#: Indices whose public-LB ratio is the 0.01 placeholder.
LB_RATIO_PLACEHOLDERS = tuple(int(i) for i in np.flatnonzero(PUBLIC_LB_RATIOS == 0.01))

#: Length of a Kaggle UUID id; HPAv18 ids are `{antibody}_{plate}_{well}_{field}` (teams.md §0.1, §0.3).
KAGGLE_ID_LENGTH = 36


def is_kaggle_id(image_id: str) -> bool:
    """True for a 36-character Kaggle UUID, False for an HPAv18 id (the rule Teams 2 and 3 used)."""
    return len(image_id) == KAGGLE_ID_LENGTH and image_id.count("-") == 4

#: The 8 dihedral (D4) transforms in the fixed order used by the data pipeline (`hpa_zoo.data.image_ops.d4_transform`)
#: and by test-time augmentation (`hpa_zoo.infer.tta.d4_apply`): Team 1's augment list (teams.md §1.4). Each name lists
#: the steps applied left to right (flips before the transpose).
D4_ORDER: tuple[str, ...] = (
    "identity",
    "flipud",
    "fliplr",
    "transpose",
    "flipud_fliplr",
    "flipud_transpose",
    "fliplr_transpose",
    "flipud_fliplr_transpose",
)

#: The main output of every zoo model (logits (B, K) float32). A multi-output model (Team 3's Inception-v3 with its
#: auxiliary head, docs/teams.md §3.2) returns a dict with this key; it is the one validated, thresholded, saved
#: in the preset, predicted and exported.
MAIN_OUTPUT = "logits"
