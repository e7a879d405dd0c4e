"""align serve: an OpenAI-compatible chat-completions API over align's models (see align/serving/app.py)."""
