"""The ServerApp and what it needs: strategy selection and output files."""
