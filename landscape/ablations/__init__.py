"""Ablation study specs (landscape/ablations/specs/*.toml) and the regeneration of their tables."""
