"""Lightning wiring: data preparation, the LightningModule, training, evaluation, prediction."""
