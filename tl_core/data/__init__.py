"""Datasets: finding images in a folder (folders), splitting them (splits), reading them (images), the scan
and decode caches (scan_cache, decode_cache), transforms, shared memory for loaders, and the demo data.

Never imports training, analysis, inference, executors or the service.
"""
