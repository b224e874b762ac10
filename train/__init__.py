"""mnist_edge.train"""
