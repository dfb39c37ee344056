"""Dataset loaders, one file each; importing this package registers them all."""
from datasets.base import DatasetError, ImageDataset, dataset_names, dataset_version, describe_datasets, load_dataset  # noqa: F401
from datasets import synthetic_cxr, synthetic_fundus  # noqa: F401  (register the phantom datasets)
from datasets import nih_chestxray14  # noqa: F401,E402  (registers nih_chestxray14)
from datasets import siim_acr  # noqa: F401,E402  (registers siim_acr)
from datasets import eyepacs, mured, odir  # noqa: F401,E402  (register the fundus datasets)
from datasets import rsna_pneumonia, vindr_cxr  # noqa: F401,E402  (register the MLVICX chest X-ray tasks)
from datasets import btcv, amos, flare22, synthetic_ct  # noqa: F401,E402  (register the CT datasets of the 3D track)
