"""`python -m align.run eval`: a model measured against a baseline on data and judges its training never used."""
