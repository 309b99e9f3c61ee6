"""Training: the LetsTalk denoiser (``loop``), its batches (``batches``), its settings (``config``)
and the small demo DC-AE (``autoencoder``). Nothing heavy is imported here."""
