"""Replay stage: windows of accepted events and the rehearsal memory the learner trains on."""
