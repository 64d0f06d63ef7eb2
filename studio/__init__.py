"""The Studio: a Gradio page over slm_core and run directories. Imports no torch when the page is built."""
