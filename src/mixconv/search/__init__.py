"""The architecture search: latency model, candidate scoring, the outer loop and the pipeline."""
