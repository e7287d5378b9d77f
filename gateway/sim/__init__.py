"""Tablet simulator: plays N tablets speaking the documented protocol."""
