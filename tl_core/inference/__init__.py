"""Using a trained run: a predictor from its checkpoint or an exported bundle, and export with its parity check."""
