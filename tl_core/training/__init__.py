"""Training a run. One concept a module:

strategies.py     the strategies and their freeze boundaries (a decorator registry)
finetuning.py     a run's fine-tuning state: the plan over layer groups, optimizer param groups
schedules.py      LR schedules
term_specs.py     the loss's terms declared without torch: names, knobs, what each reads (registries)
regularizers.py   terms toward the pretrained weights: L2-SP, EWC and its Fisher estimate
adaptation.py     domain adaptation: DANN (gradient reversal, discriminator), multi-kernel MMD
terms.py          a run's terms set up and composed as one `Terms`; the target domain's batches
feature_cache.py  frozen groups' output computed once and cached on disk
gpu_memory.py     will a run fit on its GPU (the probe step); activation checkpointing
run.py            a run, start to end: `train_run`, and `_fit`, the loop read top to bottom
run_data.py       what a run trains on: data, model, frozen features, the training loss
startup.py        before the first batch: device, precision, cuDNN's mode, the GPU probe, the start-up clock
stopping.py       how a run is asked to stop between batches (cancel, its worker's signal, taken)
loop.py           one epoch: train, evaluate; how far a stopped epoch got; the random streams
checkpoint.py     a checkpoint (best.pt, last.pt): what it holds, written, read, and a run resumed from it
record.py         the run's summary, written through one `RunRecord`
held_out.py       the held-out test split, scored once after the last epoch
"""
