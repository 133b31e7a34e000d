"""ONE-PEACE on MTEB's boards (MIEB, MAEB, MVEB): the model wrapper and its ModelMeta (docs/EVALUATION.md)."""
