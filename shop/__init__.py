"""The platform kernel: mechanisms with no business nouns. Never imports from ``apps``."""
