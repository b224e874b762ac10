"""mnist_edge.tools: the demo commands beside the product (sample pictures, the web page's server).

They use the runtime and export packages and nothing uses them: a deployed
runtime never needs this package.
"""
