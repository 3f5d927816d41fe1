"""Plain ``nn.Module`` networks (no Lightning): score networks, conditioning networks, encoders."""
