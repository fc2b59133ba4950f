"""Training-data tools for the G2VLM geometry model: procedural scenes with exact depth, points and poses."""
