"""The ML task: colored-MNIST data, partitions, the CNN and local training."""
