"""After training: quantization reports, evaluation, report cards and export."""
