"""Ablation study specs (ablations/specs/*.toml) and the regeneration of their tables."""
