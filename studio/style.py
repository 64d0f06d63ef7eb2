"""The Studio's CSS, as a Python string so it ships with the package, and the status marks drawn with it:
coloured words, not emoji."""

MARKS = {"ok": ("slm-mark-ok", "OK"), "info": ("slm-mark-info", "Note"), "warn": ("slm-mark-warn", "Warning"),
         "error": ("slm-mark-error", "Error")}


def mark(kind: str) -> str:
    """An inline status mark (HTML that Markdown components render): kind is ok, info, warn or error."""
    css, word = MARKS[kind]
    return f'<span class="slm-mark {css}">{word}</span>'


CSS = """
/* SLM Studio: a few touches on top of the Soft theme. */
.gradio-container { max-width: 1440px !important; width: 100% !important; margin: 0 auto !important; }
.slm-header { padding: 14px 18px; border-radius: 12px; margin-bottom: 4px;
  background: linear-gradient(120deg, #312e81 0%, #4338ca 55%, #6366f1 100%); color: #fff; }
.slm-header, .slm-header * { color: #fff !important; }
.slm-title { font-size: 1.7em; font-weight: 700; letter-spacing: -0.01em; }
.slm-subtitle { opacity: 0.92; margin-top: 2px; }
.slm-machine { opacity: 0.8; font-size: 0.88em; margin-top: 6px; }
.slm-machine code { background: rgba(255,255,255,0.15); color: #fff; padding: 1px 5px; border-radius: 4px; }
.slm-field-error p { color: #b91c1c !important; font-size: 0.86em !important; margin: 2px 4px 0 4px !important; }
.slm-note p, .slm-note li { font-size: 0.95em; }
.slm-progress { margin: 4px 0 6px 0; }
.slm-progress-label { font-size: 0.92em; margin-bottom: 4px; }
.slm-progress-track { height: 12px; border-radius: 6px; background: #e5e7eb; overflow: hidden; }
.slm-progress-fill { height: 100%; border-radius: 6px; transition: width 0.8s ease; }
.slm-muted { color: #6b7280; font-style: italic; }
table.slm-samples { width: 100%; border-collapse: collapse; font-size: 0.9em; }
table.slm-samples th, table.slm-samples td { border: 1px solid #e5e7eb; padding: 6px 8px; vertical-align: top; text-align: left; }
table.slm-samples th { background: #f3f4f6; }
table.slm-samples td.slm-step { white-space: nowrap; color: #4b5563; font-variant-numeric: tabular-nums; }
table.slm-samples td b { color: #4338ca; font-weight: 600; margin-right: 2px; }
.slm-estimate table { width: 100%; }
.slm-estimate td, .slm-estimate th { padding: 4px 8px !important; }
.slm-record { white-space: pre-wrap; font-size: 0.88em; background: #f8fafc; border: 1px solid #e5e7eb;
  border-radius: 8px; padding: 8px 10px; margin: 6px 0; max-height: 180px; overflow: auto; }
.slm-buttons button { min-width: 0 !important; }
.slm-mark { display: inline-block; padding: 0 7px; margin-right: 4px; border-radius: 9px; font-size: 0.8em;
  font-weight: 700; letter-spacing: 0.02em; line-height: 1.6; vertical-align: 1px; color: #fff !important; }
.slm-mark-ok { background: #059669; } .slm-mark-info { background: #2563eb; }
.slm-mark-warn { background: #d97706; } .slm-mark-error { background: #dc2626; }
.slm-bytes { color: #9ca3af; font-weight: 700; padding: 0 1px; cursor: help; }
table.slm-diff del { color: #b91c1c; background: #fee2e2; text-decoration: line-through; }
table.slm-diff ins { color: #065f46; background: #d1fae5; text-decoration: none; }
/* The Chatbot's floating label sat over the first message: the messages start below it. */
#chat-bot .bubble-wrap, #compare-bot-a .bubble-wrap, #compare-bot-b .bubble-wrap { padding-top: 38px; }
/* A dropdown's value that does not fit ends in an ellipsis instead of being cut mid-letter. */
.gradio-container input[role="listbox"], .gradio-container .wrap-inner input { text-overflow: ellipsis; }
"""
