"""Vision-language tasks."""
