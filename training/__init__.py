"""Training jobs: read windows from the store, fine-tune, gate, publish versions and drift metrics."""
