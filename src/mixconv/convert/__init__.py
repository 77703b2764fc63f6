"""``mixconv convert``: timm <-> mixconv checkpoints, and folders in timm's hub layout with a model card."""
from mixconv.convert.checkpoint import convert_checkpoint
from mixconv.convert.hub import convert_hub, save_pretrained
from mixconv.convert.result import ConvertResult

__all__ = ["ConvertResult", "convert_checkpoint", "convert_hub", "save_pretrained"]
