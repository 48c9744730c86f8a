"""The ClientApp: local training on one partition."""
