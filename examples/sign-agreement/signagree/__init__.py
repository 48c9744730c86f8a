"""A small Flower app that uses the FedGMA library as any user would."""
