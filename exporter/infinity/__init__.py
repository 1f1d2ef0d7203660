"""The Infinity family (Infinity-2B/8B): transformer, VAE decoder, text encoder, presets."""
