"""The method: spectrum, schedules, samplers, the UNet, FLOP counts and checkpoints. torch and numpy only."""
