"""Dataset loaders, one file each; importing this package registers them all."""

# importing a loader's module registers it (datasets.base.register_dataset)
from datasets import (  # noqa: F401
    amos,
    btcv,
    eyepacs,
    flare22,
    mured,
    nih_chestxray14,
    odir,
    rsna_pneumonia,
    siim_acr,
    synthetic_ct,
    synthetic_cxr,
    synthetic_fundus,
    vindr_cxr,
)
from datasets.base import DatasetError, ImageDataset, dataset_names, dataset_version, describe_datasets, load_dataset  # noqa: F401
