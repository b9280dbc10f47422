"""Model growth: operators that turn a trained small lit_gpt checkpoint into a larger model's weights."""
