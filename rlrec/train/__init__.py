"""Training: the loop (collect -> store -> update -> log -> checkpoint) and the run format."""
