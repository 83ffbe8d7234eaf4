"""See what a ViT learned: attention maps and rollout, the paper's figures, run pictures and reports."""

from vitlab.insight.attention import attention_maps, attention_rollout, last_layer_head_maps, overlay, rollout_maps
from vitlab.insight.figures import mean_attention_distance, patch_filter_components, position_similarity

__all__ = [
    "attention_maps", "attention_rollout", "last_layer_head_maps", "mean_attention_distance", "overlay",
    "patch_filter_components", "position_similarity", "rollout_maps",
]
