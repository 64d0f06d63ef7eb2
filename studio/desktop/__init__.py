"""`slm-studio`: the Studio in its own window (pywebview), one instance at a time, gated by a per-launch secret.
The window libraries are the optional `desktop` extra; everything here but `window.py` imports without them."""
