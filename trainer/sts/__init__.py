"""STS, the SAE-based transferability score: which target domains will a fine-tuning set move?

See ``docs/sts.md``. ``activations`` collects residual-stream activations at a layer and aligns the
base and in-context conditions token by token; ``sae`` trains, saves and loads the sparse
autoencoder (sae-lens); ``scores`` holds the formulas; ``transferability`` runs them on a model.
"""

from trainer.sts.activations import AlignedPair, collect_residual, in_context_pairs, split_demonstrations
from trainer.sts.sae import encode, load_or_train_sae, load_sae, save_sae, train_sae
from trainer.sts.scores import Correlation, domain_score, feature_shift, pearson, top_shifted_dimensions
from trainer.sts.transferability import ShiftedDimensions, shifted_dimensions, target_scores, validate

__all__ = [
    "AlignedPair",
    "Correlation",
    "ShiftedDimensions",
    "collect_residual",
    "domain_score",
    "encode",
    "feature_shift",
    "in_context_pairs",
    "load_or_train_sae",
    "load_sae",
    "pearson",
    "save_sae",
    "shifted_dimensions",
    "split_demonstrations",
    "target_scores",
    "top_shifted_dimensions",
    "train_sae",
    "validate",
]
