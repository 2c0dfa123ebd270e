"""Training and evaluating Matformer models on the user's own data."""
