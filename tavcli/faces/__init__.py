"""What users touch: the `tav` CLI and `tav bench`.
"""
