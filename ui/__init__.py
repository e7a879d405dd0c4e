"""Gradio apps people click: the labeling app (label.py) and the chat app (chat.py)."""
