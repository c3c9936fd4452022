"""Learner stage: continual fine-tuning of the recommender, published behind a quality gate."""
