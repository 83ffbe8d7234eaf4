"""See what a ViT learned: attention maps and rollout, the paper's figures, run pictures and reports."""

from vitlab.insight.attention import attention_maps, attention_rollout, overlay, rollout_and_heads
from vitlab.insight.figures import mean_attention_distance, patch_filter_components, position_similarity

__all__ = [
    "attention_maps", "attention_rollout", "mean_attention_distance", "overlay", "patch_filter_components",
    "position_similarity", "rollout_and_heads",
]
