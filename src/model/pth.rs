//! Reader for legacy (pre-1.6, non-zip) torch.save files.
