"""Vision tasks (image classification, dense prediction)."""
