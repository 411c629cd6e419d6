"""Delivery channels: one file per channel behind the small protocol of ``base.py``."""
