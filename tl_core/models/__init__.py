"""Backbones: the families and their layer groups, pretrained weights and their preprocessing, the model with a new head, N-channel input, a model cut at a freeze boundary, LoRA's adapters injected and merged back.

Never imports training, analysis, inference, executors or the service.
"""
