"""Datasets: finding images in a folder, splitting them, reading them, the scan and decode caches, shared memory for loaders, and the demo data.

Never imports training, analysis, inference, executors or the service.
"""
