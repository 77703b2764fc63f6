"""Pictures of a model's behaviour: the validation report (confusion matrix, per-class scores, mistakes) and
Grad-CAM overlays."""
