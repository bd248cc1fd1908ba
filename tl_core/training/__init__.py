"""Training a run: strategies and their freeze boundaries, LR schedules, fine-tuning state, the loss's terms (regularisers, domain adaptation), the frozen-feature cache, GPU memory, the loop and its checkpoints.
"""
