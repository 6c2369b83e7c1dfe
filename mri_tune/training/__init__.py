"""The model and its one training loop: no Ray, no experiment.

    model.py       CNNSpec + RegionCNN (a plain nn.Module built from typed numbers)
    augment.py     batched, seeded augmentation on the model's device
    config.py      TrainConfig; a Table 1 config dict -> (CNNSpec, TrainConfig)
    device.py      device and numerics (bf16 autocast on CUDA, channels_last)
    trainer.py     Trainer: the loop, weighted loss, validation metrics
    inference.py   logits and probabilities of a trained model
    checkpoint.py  checkpoint and metrics files
    failures.py    known failures (oom, invalid_spec, diverged) as TrainingFailure
    run.py         train_from_store: the one entry point (CLI, trainable, benchmarks)
"""
