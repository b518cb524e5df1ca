"""What runs on a trained run: benchmark evaluation (lm-eval), prediction and export."""
