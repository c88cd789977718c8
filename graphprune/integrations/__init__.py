"""Helpers for other libraries' models (each module needs its library; graphprune itself never imports them)."""
