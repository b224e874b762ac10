"""mnist_edge.export"""
