"""Evaluation gates between stages: toxicity and social-bias checks that decide whether a model is promoted."""
